"""The HL7 v2 sink (``[hl7]``): each report to the RIS as an ORU^R01 over MLLP, answered by an ACK.

Each document of a group (our SRs, the review's rejection notes; see :mod:`.hl7message` for the
message) goes over one MLLP connection (:mod:`.mllp`), one message after the other, each waiting
for its ACK:

- **AA** (or CA): delivered.
- **AE** (or CE): the receiver could not file it now: the job waits and is sent again with
  delivery's backoff, the receiver's reason kept as the job's reason.
- **AR** (or CR): refused for good: the job fails with the receiver's reason and is never resent.
- An answer that is not an ACK of this message: the job waits (the rest of the group too).
- No connection, TLS failure, no ACK in time, a connection that breaks: nothing was filed for
  that message, so it is :class:`~.base.DestinationUnavailable` when it happens before any ACK of
  the group (everything waits), and a transient outcome for it and the rest of the group otherwise.

Files that are not one of our documents (a Secondary Capture, an Encapsulated PDF) have nothing to
say to a RIS: they count as delivered without a message. Logs name documents by UID only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medblip_dicom.errors import ReportError
from medblip_dicom.report_view import read_document

from medblip_dicom.integrations.config.hl7 import Hl7Config
from medblip_dicom.integrations.delivery.sinks.base import DestinationUnavailable, StoreOutcome
from medblip_dicom.integrations.delivery.sinks.dicom import client_ssl_context
from medblip_dicom.integrations.delivery.sinks.hl7message import (
    RESULT_STATUS, Parties, build_oru, control_id, parse_ack,
)
from medblip_dicom.integrations.delivery.sinks.mllp import MllpConnection, MllpError

logger = logging.getLogger(__name__)


class Hl7Unavailable(DestinationUnavailable):
    """The HL7 receiver could not be reached, or broke off before it answered any message of the group."""


class Hl7Sink:
    """Sends ORU^R01 messages to one MLLP receiver (``[hl7] destination``)."""

    kind = "hl7"
    protocol = "HL7 v2 MLLP"

    def __init__(self, config: Hl7Config) -> None:
        self.config = config
        self.host, self.port = config.address
        self.destination = config.destination
        self.parties = Parties(config.sending_application, config.sending_facility, config.receiving_application,
                               config.receiving_facility, config.processing_id)
        self._ssl = client_ssl_context(config.tls) if config.tls.enabled else None

    def messages(self, paths: Sequence[Path]) -> tuple[dict[Path, StoreOutcome], list[tuple[Path, str, str]]]:
        """The outcomes known without sending (not a report, unreadable), and ``(path, MSH-10, message)``
        for the rest."""
        import pydicom

        known: dict[Path, StoreOutcome] = {}
        todo: list[tuple[Path, str, str]] = []
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - our own file unreadable: nothing to send, ever
                known[path] = StoreOutcome(path, None, False, True, f"cannot read the report ({type(exc).__name__})")
                continue
            try:
                doc = read_document(ds, label=path.name)
            except ReportError:
                known[path] = StoreOutcome(path, None, True, False, "not a report: no HL7 message")
                continue
            todo.append((path, control_id(doc.sop_instance_uid), build_oru(doc, self.parties)))
            logger.debug("HL7 ORU^R01 %s for %s (%s, OBR-25 %s)", todo[-1][1], doc.sop_instance_uid, doc.kind,
                         RESULT_STATUS[doc.kind])
        return known, todo

    def send(self, paths: Sequence[Path]) -> list[StoreOutcome]:
        """One outcome per file, in order (see the module docstring)."""
        outcomes, todo = self.messages(paths)
        if todo:
            outcomes.update(self._exchange(todo))
        return [outcomes[p] for p in paths]

    def _exchange(self, todo: list[tuple[Path, str, str]]) -> dict[Path, StoreOutcome]:
        out: dict[Path, StoreOutcome] = {}
        try:
            with MllpConnection(self.host, self.port, timeout_s=self.config.timeout_s, ssl_context=self._ssl) as conn:
                for i, (path, msg_id, message) in enumerate(todo):
                    try:
                        answer = conn.exchange(message)
                    except MllpError as exc:
                        if not out:
                            raise Hl7Unavailable(str(exc)) from None
                        for rest, _, _ in todo[i:]:
                            out[rest] = StoreOutcome(rest, None, False, False, str(exc))
                        break
                    out[path], in_step = self._outcome(path, msg_id, answer)
                    if not in_step:  # the receiver answered something else: stop talking to it for now
                        for rest, _, _ in todo[i + 1:]:
                            out[rest] = StoreOutcome(rest, None, False, False, "not sent: the previous ACK was wrong")
                        break
        except MllpError as exc:
            raise Hl7Unavailable(str(exc)) from None
        return out

    def _outcome(self, path: Path, msg_id: str, answer: str) -> tuple[StoreOutcome, bool]:
        """The outcome of one answer, and whether the answer was an ACK of this very message."""
        try:
            ack = parse_ack(answer)
        except ValueError as exc:
            return StoreOutcome(path, None, False, False, f"answered without an ACK ({exc})"), False
        if ack.control_id != msg_id:
            return StoreOutcome(path, None, False, False, f"answered an ACK of another message than {msg_id} "
                                                          f"(MSA-2 is {ack.control_id[:40]!r})"), False
        why = f"{ack.code}" + (f": {ack.text}" if ack.text else "")
        if ack.accepted:
            logger.info("HL7 receiver %s accepted message %s", self.destination, msg_id)
            return StoreOutcome(path, None, True, False, why), True
        logger.warning("HL7 receiver %s answered %s to message %s", self.destination, ack.code, msg_id)
        return StoreOutcome(path, None, False, ack.rejected, why), True
