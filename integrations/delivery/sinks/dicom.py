"""Storage SCU: send reports to the configured destination (a PACS) and classify its answers.

One association carries a group of files (a study's reports). TCP_NODELAY is set on the
association's socket: C-STORE requests and responses are small messages and Nagle's algorithm,
meeting the peer's delayed ACKs, otherwise adds tens of milliseconds to each of them
(``bench/integrations_throughput.py`` measures both).

Each file's outcome is one of: delivered (success or a warning status), *transient* (out of
resources, processing failure, no answer: try again later) or *permanent* (the destination
refuses this object: cannot understand, data set does not match SOP class, SOP class not
supported, not authorised, ...). A destination that cannot be reached raises
:class:`~.base.DestinationUnavailable` (the :class:`~.base.Sink` contract).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from medblip_dicom.integrations.net import pynetdicom_compat
from medblip_dicom.integrations.config.file import Destination, ForwardTLSConfig
from medblip_dicom.integrations.delivery.sinks.base import (  # noqa: F401 - re-exported
    DestinationUnavailable, StoreOutcome,
)

logger = logging.getLogger(__name__)

COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
#: The review station's IOCM rejection notes (:mod:`.review.signing`).
KEY_OBJECT_SELECTION = UID("1.2.840.10008.5.1.4.1.1.88.59")
#: The optional PDF of each report (``[output] pdf``, :mod:`medblip_dicom.pdf_report`).
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")

#: Status codes meaning "not now, maybe later" (PS3.4 Annex B and GG): out of resources, processing failure.
_TRANSIENT = {0x0110, 0x0213}


def status_meaning(status: int) -> tuple[bool, bool, str]:
    """``(delivered, permanent, words)`` for a C-STORE response status."""
    if status == 0x0000:
        return True, False, "success"
    if status in (0xB000, 0xB006, 0xB007):
        return True, False, f"warning 0x{status:04X} (stored with coercion or elements discarded)"
    if 0xA700 <= status <= 0xA7FF:
        return False, False, f"0x{status:04X} out of resources"
    if status in _TRANSIENT:
        return False, False, f"0x{status:04X} processing failure"
    if 0xA900 <= status <= 0xA9FF:
        return False, True, f"0x{status:04X} data set does not match SOP class"
    if 0xC000 <= status <= 0xCFFF:
        return False, True, f"0x{status:04X} cannot understand"
    words = {0x0122: "SOP class not supported", 0x0124: "not authorized", 0x0117: "invalid SOP instance",
             0x0211: "unrecognized operation", 0x0210: "duplicate invocation"}.get(status, "failure")
    return False, True, f"0x{status:04X} {words}"


def client_ssl_context(tls: ForwardTLSConfig) -> ssl.SSLContext:
    """TLS towards the destination: verify it with `tls.ca`, present `tls.cert` if set."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


class ForwardClient:
    """Sends files to one destination over one association per call of :meth:`send`."""

    #: What the service sends: its SRs and, optionally, the Secondary Capture pictures and the PDF reports.
    DEFAULT_SOP_CLASSES = (COMPREHENSIVE_SR, SECONDARY_CAPTURE, KEY_OBJECT_SELECTION, ENCAPSULATED_PDF)

    kind = "dicom"
    protocol = "C-STORE"

    def __init__(self, destination: Destination, *, calling_ae_title: str = "MEDBLIP", timeout_s: float = 30.0,
                 tls: ForwardTLSConfig | None = None, nodelay: bool = True,
                 sop_classes: Sequence[str] | None = None) -> None:
        self.destination = destination
        self.sop_classes = [UID(uid) for uid in (sop_classes or self.DEFAULT_SOP_CLASSES)]
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s
        self.nodelay = nodelay
        self._tls_args = None
        if tls is not None and tls.enabled:
            self._tls_args = (client_ssl_context(tls), destination.host)

    def _ae(self, raw_sockets: list[socket.socket] | None = None):  # noqa: ANN202 - pynetdicom is imported lazily
        pynetdicom_compat.check()
        ae = pynetdicom_compat.nodelay_ae(self.calling_ae_title, nodelay=self.nodelay, sockets=raw_sockets)
        for sop_class in self.sop_classes:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = self.timeout_s
        ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        return ae

    def associate(self):  # noqa: ANN201
        """Open an association (raises :class:`DestinationUnavailable`); the caller releases it."""
        dest = self.destination
        raw_sockets: list[socket.socket] = []
        ae = self._ae(raw_sockets)
        kwargs = {"ae_title": dest.ae_title}
        if self._tls_args is not None:
            kwargs["tls_args"] = self._tls_args
        assoc, failure = pynetdicom_compat.associate(ae, raw_sockets, dest.host, dest.port, **kwargs)
        if failure:
            why = {"unreachable": "cannot be reached (no TCP connection)",
                   "rejected": "rejected the association (check its AE title and whether it knows ours)",
                   "aborted": "aborted the association"}[failure]
            raise DestinationUnavailable(f"destination {dest} {why}")
        return assoc

    def send(self, paths: Sequence[Path]) -> list[StoreOutcome]:
        """C-STORE each file over one association; one outcome per file, in order.

        Raises :class:`DestinationUnavailable` when no association can be made. If the
        association breaks part way, the remaining files are returned as transient outcomes.
        """
        import pydicom

        assoc = self.associate()
        outcomes: list[StoreOutcome] = []
        try:
            for path in paths:
                if not assoc.is_established:
                    outcomes.append(StoreOutcome(path, None, False, False, "association lost"))
                    continue
                ds = pydicom.dcmread(path)
                accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID]
                if not accepted:
                    outcomes.append(StoreOutcome(
                        path, None, False, True,
                        f"destination {self.destination} does not accept {UID(ds.SOPClassUID).name}",
                    ))
                    continue
                try:
                    response = assoc.send_c_store(ds)
                except (RuntimeError, ValueError, OSError) as exc:
                    outcomes.append(StoreOutcome(path, None, False, False, f"send failed ({exc})"))
                    continue
                status = response.get("Status") if response is not None else None
                if status is None:
                    outcomes.append(StoreOutcome(path, None, False, False,
                                                 "no response (timeout or association aborted)"))
                    continue
                delivered, permanent, words = status_meaning(int(status))
                outcomes.append(StoreOutcome(path, int(status), delivered, permanent, words))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes
