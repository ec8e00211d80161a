"""What producers and sinks report as they work, fanned out to the metrics and the audit trail.

The node, the watch folder and delivery are given one :class:`Telemetry` (a quiet one when nothing
is configured), so none of them needs to know whether metrics or auditing are on.

The node's per-instance figures are batched, so that an instance costs a list append before its
answer: C-STORE handling times reach the histogram at most :data:`CSTORE_BATCH_S` later (at once
after a quiet spell, at the end of each association, and before every scrape), and the instances
of an association are audited in one message per study when it ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any, BinaryIO

from medblip_dicom.integrations.ops.audit import Study

if TYPE_CHECKING:
    from medblip_dicom.integrations.ops.audit import AuditTrail
    from medblip_dicom.integrations.ops.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

#: C-STORE handling times wait at most this long (or until :data:`CSTORE_BATCH` of them wait) before
#: they are observed in the histogram.
CSTORE_BATCH_S = 1.0
CSTORE_BATCH = 256


@dataclass
class Transfer:
    """The instances one association (or one file) brought, by study: one audit message each."""

    peer_ae: str = ""
    peer_host: str = ""
    studies: dict[str, Study] = field(default_factory=dict)

    def add(self, study_uid: str | None, patient_id: str | None, sop_class: str | None) -> None:
        key = study_uid or "unknown"
        study = self.studies.setdefault(key, Study(key, patient_id or "", {}))
        if sop_class:
            study.sop_classes[sop_class] = study.sop_classes.get(sop_class, 0) + 1


class Telemetry:
    """Metrics and audit for one service; both optional."""

    def __init__(self, *, metrics: ServiceMetrics | None = None, audit: AuditTrail | None = None,
                 ae_title: str = "MEDBLIP") -> None:
        self.metrics = metrics
        self.audit = audit
        self.ae_title = ae_title
        self._open: dict[int, Transfer] = {}
        self._lock = threading.Lock()
        self._cstore: list[float] = []
        self._cstore_flushed = 0.0
        if metrics is not None:
            metrics.before_scrape.append(self.flush)

    # -- the node ---------------------------------------------------------------------------------

    def cstore(self, seconds: float) -> None:
        """One C-STORE handled in `seconds` (observed with the batch it joins)."""
        if self.metrics is None:
            return
        with self._lock:
            self._cstore.append(seconds)
            if len(self._cstore) < CSTORE_BATCH and monotonic() - self._cstore_flushed < CSTORE_BATCH_S:
                return
        self.flush()

    def flush(self) -> None:
        """Observe the C-STORE handling times that wait."""
        with self._lock:
            pending, self._cstore = self._cstore, []
            self._cstore_flushed = monotonic()
        if self.metrics is not None:
            for seconds in pending:
                self.metrics.cstore_seconds.observe(seconds)

    def stored(self, association: Any, *, study_uid: str | None, patient_id: str | None, sop_class: str | None) -> None:
        """One instance of an association is in the spool (audited when the association ends)."""
        if self.audit is None:
            return
        with self._lock:
            transfer = self._open.setdefault(id(association), Transfer(
                str(association.requestor.ae_title), str(association.requestor.address)))
            transfer.add(study_uid, patient_id, sop_class)

    def association_ended(self, association: Any) -> None:
        """An association is over: observe its C-STORE times and audit what it brought."""
        self.flush()
        with self._lock:
            transfer = self._open.pop(id(association), None)
        if transfer is not None and self.audit is not None:
            self.audit.received(transfer.studies.values(), via="DICOM C-STORE", peer_ae=transfer.peer_ae,
                                peer_host=transfer.peer_host, our_ae=self.ae_title)

    def security_alert(self, *, peer: str, detail: str) -> None:
        if self.audit is not None:
            self.audit.security_alert(peer=peer, detail=detail)

    # -- the watch folder and delivery --------------------------------------------------------------

    def file_taken(self, path: Path | BinaryIO) -> None:
        """A file of the inbox is in the spool (read its header for the audit message first); the watch
        folder passes the open file it took, so the audit never reads a name an outsider may have swapped."""
        if self.audit is None:
            return
        transfer = _transfer_of([path], Transfer("watch folder", "localhost"))
        if not transfer.studies:
            transfer.add(None, None, None)  # not readable as DICOM: still audited, as an unknown study
        self.audit.received(transfer.studies.values(), via="the watch folder", peer_ae=transfer.peer_ae,
                            peer_host=transfer.peer_host, our_ae=self.ae_title)

    def reports_sent(self, files: list[Path], *, destination: str, ok: bool, detail: str = "") -> None:
        """Reports went to (or were refused by) a destination over one association."""
        if self.audit is None or not files:
            return
        transfer = _transfer_of(files, Transfer())
        self.audit.sent(transfer.studies.values(), destination=destination, our_ae=self.ae_title, ok=ok,
                        detail=detail)


def _transfer_of(files: Sequence[Path | BinaryIO], transfer: Transfer) -> Transfer:
    """Add each file's study, patient and SOP class (read from its header) to `transfer`."""
    from medblip_dicom.reading import read_header

    for path in files:
        header = read_header(path, ("StudyInstanceUID", "PatientID", "SOPClassUID"))
        if header is not None:
            transfer.add(str(header.get("StudyInstanceUID", "")), str(header.get("PatientID", "")),
                         str(header.get("SOPClassUID", "")))
    return transfer
