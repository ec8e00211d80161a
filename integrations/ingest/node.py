"""The DICOM node: a pynetdicom Storage SCP (plus C-ECHO) that feeds the spool.

It accepts every storage SOP class with every transfer syntax the installed pydicom decoders
can decode (pynetdicom's default contexts accept uncompressed data only), so a modality can send
JPEG, JPEG-LS, JPEG 2000 or RLE data unchanged. The C-STORE handler does one thing: it hands the
instance to the one admission path (:func:`~.admit.admit`: parse check, header facts, durable write
into the spool) and answers with the status it maps the outcome to. Captioning happens later, in
the worker, so a sender is never kept waiting for the model.

Statuses: 0x0000 once the instance is on disk (also for a duplicate, which is recorded as
skipped); 0xA700 *out of resources* when the spool is full or cannot write; 0xC210 *cannot
understand* when the data set cannot be parsed (truncated, an unknown VR, a broken sequence at
any depth: :func:`~medblip_dicom.reading.check_parsable`), or is deflated and would inflate beyond
:data:`~medblip_dicom.dicomfile.MAX_INFLATED_BYTES`. Values are not all converted here (that was
most of a C-STORE's cost); one that breaks its VR fails the instance's job later, with a reason.
A data set in explicit or implicit VR little endian is parsed and checked in one pass over its
bytes (:mod:`.scan`), which keeps only the header values admission reads; anything that pass does
not read is parsed by pynetdicom and checked as before. The instance is stored as the peer sent it,
behind a file meta header written directly (:mod:`.part10`). Each association's instances are
logged in one INFO line when it ends.

Security: listens on 127.0.0.1 unless told otherwise; an optional calling-AE allow-list; optional
TLS (server certificate; with ``client_ca`` a client certificate is required). TLS handshakes run
in the association's own thread with a timeout, so a silent client cannot stall the listener.
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import time
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID, AllTransferSyntaxes

from medblip_dicom.dicomfile import DEFLATED_SYNTAX, MAX_INFLATED_BYTES, inflates_beyond

from medblip_dicom.integrations.net import pynetdicom_compat
from medblip_dicom.integrations.config.file import NodeConfig, NodeTLSConfig
from medblip_dicom.integrations.spool import Spool
from medblip_dicom.integrations.spool.files import INFO_TAGS
from medblip_dicom.integrations.ops.telemetry import Telemetry
from medblip_dicom.integrations.ingest.admit import Outcome, Refused, admit
from medblip_dicom.integrations.ingest.part10 import received_file
from medblip_dicom.integrations.ingest.scan import ScannedHeader, scan

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
#: What the handler reads of a header: what admission records, the character set its texts are in,
#: and the PatientID the audit message names.
HEADER_TAGS = tuple(tag_for_keyword(k) for k in (*INFO_TAGS, "SpecificCharacterSet", "PatientID"))

#: How often an association's DUL reactor looks for work when idle (pynetdicom's default: 1 ms).
#: Each C-STORE waits for this loop at least twice, so the default caps a loopback listener's rate;
#: 0.2 ms costs a few per cent of one core per idle open association (bench/node_ingest.py measures
#: both; figures in bench/RESULTS.md).
DUL_POLL_S = 0.0002


def accepted_transfer_syntaxes() -> list[UID]:
    """Every transfer syntax the installed pydicom can decode: uncompressed ones first, then
    each compressed syntax whose decoder plug-in is available (``get_decoder(uid).is_available``)."""
    from pydicom.pixels import get_decoder

    uncompressed = [UID("1.2.840.10008.1.2.1"), UID("1.2.840.10008.1.2"), UID("1.2.840.10008.1.2.1.99"),
                    UID("1.2.840.10008.1.2.2")]
    out = list(uncompressed)
    for uid in AllTransferSyntaxes:
        if uid in out:
            continue
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except NotImplementedError:
            continue
    return out


def server_ssl_context(tls: NodeTLSConfig) -> ssl.SSLContext:
    """TLS for the listener: the server certificate; with ``client_ca``, client certificates are required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.client_ca is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class StorageNode:
    """The Storage SCP. :meth:`start` listens (non-blocking), :meth:`stop` shuts it down."""

    def __init__(self, spool: Spool, config: NodeConfig, telemetry: Telemetry | None = None, *,
                 reuse_port: bool = False) -> None:
        self.spool = spool
        self.reuse_port = reuse_port  # listener processes share the port (``[node] listeners``)
        self.config = config
        self.telemetry = telemetry or Telemetry(ae_title=config.ae_title)
        self.done_dir = spool.root / "done" if config.keep_inputs else None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.refused = 0
        #: What each open association brought so far, by outcome (one log line when it ends).
        self._tallies: dict[int, collections.Counter[Outcome]] = {}
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the node is not listening")
        return int(self._server.server_address[1])

    def _ae(self) -> Any:
        from pynetdicom import AE, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        pynetdicom_compat.check()
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        syntaxes = accepted_transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.maximum_pdu_size = cfg.max_pdu
        if cfg.allowed_calling_aets:
            ae.require_calling_aet = list(cfg.allowed_calling_aets)
        return ae

    def start(self) -> None:
        """Bind and listen in a background thread."""
        from pynetdicom import evt

        cfg = self.config
        ae = self._ae()
        ssl_context = server_ssl_context(cfg.tls) if cfg.tls.enabled else None
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        listener = pynetdicom_compat.listener_class(cfg.acse_timeout_s, self._on_handshake_failed,
                                                    reuse_port=self.reuse_port)
        self._server = ae.make_server((cfg.host, cfg.port), ssl_context=ssl_context, evt_handlers=handlers,
                                      server_class=listener)
        pynetdicom_compat.register_server(ae, self._server)
        self._thread = threading.Thread(target=self._server.serve_forever, name="medblip-node", daemon=True)
        self._thread.start()
        logger.info("node %s listening on %s:%d (%s, %d transfer syntaxes, calling AEs: %s)", cfg.ae_title, cfg.host,
                    self.port, "TLS" if ssl_context else "plain TCP", len(accepted_transfer_syntaxes()),
                    ", ".join(cfg.allowed_calling_aets) or "any")

    def run(self, stop: threading.Event) -> None:
        """Listen until `stop` is set."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop listening; let associations in progress finish for up to `grace_s`, then abort them."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        deadline = time.monotonic() + grace_s
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            assoc.abort()
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.info("node %s stopped (%d stored, %d refused)", self.config.ae_title, self.stored, self.refused)

    # -- handlers --------------------------------------------------------------------------------

    def handle_echo(self, event: Any) -> int:
        logger.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_connection(self, event: Any) -> None:
        """A new association: make its reactor answer sooner (pynetdicom has no public setting)."""
        pynetdicom_compat.set_reactor_poll(event.assoc, DUL_POLL_S)

    def _on_closed(self, event: Any) -> None:
        """An association ended (released, aborted or dropped): log and audit what it brought."""
        with self._lock:
            counts = self._tallies.pop(id(event.assoc), None)
        if counts:
            requestor = event.assoc.requestor
            stored = sum(n for outcome, n in counts.items() if outcome.stored)
            skipped = ", ".join(f"{counts[o]} {o.label}" for o in (Outcome.DUPLICATE, Outcome.OWN_OUTPUT) if counts[o])
            refused = sum(n for outcome, n in counts.items() if not outcome.stored)
            why = ", ".join(f"{n} {o.label}, 0x{o.dimse_status:04X}" for o, n in counts.items() if not o.stored)
            logger.info("association from %s@%s ended: %d stored%s%s", requestor.ae_title, requestor.address, stored,
                        f" ({skipped})" if skipped else "", f", {refused} refused ({why})" if refused else "")
        self.telemetry.association_ended(event.assoc)

    def _on_handshake_failed(self, client_address: Any, exc: BaseException) -> None:
        peer = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        why = getattr(exc, "reason", None) or type(exc).__name__
        logger.warning("refused a connection from %s: TLS handshake failed (%s)", peer, why)
        self.telemetry.security_alert(peer=peer, detail=f"TLS handshake failed ({why})")

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        logger.warning("association from %s (calling AE %s) rejected", requestor.address, requestor.ae_title)
        self.telemetry.security_alert(peer=f"{requestor.ae_title}@{requestor.address}",
                                      detail="association rejected (calling AE title not allowed, or no room)")

    def handle_store(self, event: Any) -> int | Dataset:
        """Write the instance durably into the spool (:func:`~.admit.admit`), then answer. Never captions here."""
        started = time.perf_counter()
        request = event.request
        verdict = admit(self.spool, lambda: _parse(event), lambda: received_file(event), origin="node",
                        source=f"C-STORE from {event.assoc.requestor.ae_title}",
                        transfer_syntax=str(event.context.transfer_syntax),
                        sop_class_uid=str(request.AffectedSOPClassUID or ""),
                        sop_instance_uid=str(request.AffectedSOPInstanceUID or ""), done_dir=self.done_dir)
        self._tally(event.assoc, verdict.outcome)
        if not verdict.outcome.stored:
            self.refused += 1
            return verdict.dimse_response()
        self.stored += 1
        self.telemetry.cstore(time.perf_counter() - started)
        if self.telemetry.audit is not None:
            self.telemetry.stored(event.assoc, study_uid=verdict.study_instance_uid or None,
                                  sop_class=verdict.sop_class_uid or None, patient_id=_patient_id(verdict.dataset))
        return STATUS_SUCCESS

    def _tally(self, association: Any, outcome: Outcome) -> None:
        """Count what an association brought (logged once, when it ends)."""
        with self._lock:
            counts = self._tallies.setdefault(id(association), collections.Counter())
            counts[outcome] += 1


def _parse(event: Any) -> Dataset | ScannedHeader:
    """The C-STORE's header: checked in one pass over its bytes (:func:`~.scan.scan`), or, for
    anything that pass leaves alone, parsed by pynetdicom. A deflated data set is first measured,
    streaming: pynetdicom inflates it whole when it is first touched, so a small bomb could exhaust
    memory."""
    raw = event.request.DataSet
    syntax = str(event.context.transfer_syntax)
    if syntax == DEFLATED_SYNTAX and hasattr(raw, "seek"):
        raw.seek(0)
        too_big = inflates_beyond(raw)
        raw.seek(0)
        if too_big:
            raise Refused(Outcome.CANNOT_UNDERSTAND, f"its deflated data set inflates to more than "
                          f"{MAX_INFLATED_BYTES // 2**20} MiB", comment="deflated data set too large")
    if hasattr(raw, "getvalue"):
        scanned = scan(raw.getvalue(), syntax, HEADER_TAGS)
        if scanned is not None:
            return scanned
    return event.dataset


def _patient_id(ds: Any) -> str:
    """PatientID for the audit message ("" when it cannot be read: the instance is stored already)."""
    try:
        return str(ds.get("PatientID") or "")
    except Exception:  # noqa: BLE001 - a broken value; the worker reports it
        return ""
