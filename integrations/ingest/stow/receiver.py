"""What the STOW-RS endpoint does with the parts of a complete request: store each through the
admission path the C-STORE handler uses (:func:`~..admit.admit`), and build the PS3.18 response.

Each part is read as a Part 10 file (of type ``application/dicom``, not a deflate bomb) and
admitted on its own: parsable at any depth, not truncated, with its UIDs, its study the one of the
URL if the URL names one, then written into the spool, which returns only once the instance and
its journal row are durable. Only parts the spool holds are listed in ReferencedSOPSequence; the
others are in FailedSOPSequence with their FailureReason (:class:`~..admit.Outcome`):

- 0xA700 out of resources: the spool is full or cannot write (try again later);
- 0xC210 cannot understand: not DICOM, not parsable, truncated, another media type, a bomb;
- 0xA900 data set does not match: its StudyInstanceUID is not the one of the URL;
- 0x0110 processing failure: the spool failed in an unexpected way (the log has the traceback).

The response status (:attr:`StowResult.http_status`): 200 when every part was stored, 409 when
none was, else 202. A duplicate counts as stored, as for C-STORE (the spool records it as skipped).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from medblip_dicom.dicomfile import deflate_bomb_at

from medblip_dicom.integrations.ingest.admit import Outcome, Refused, admit
from medblip_dicom.integrations.ingest.stow.multipart import Part
from medblip_dicom.integrations.spool import Spool
from medblip_dicom.integrations.ops.telemetry import Telemetry, Transfer

logger = logging.getLogger(__name__)


@dataclass
class StowResult:
    """The outcome of one request: ``(SOPClassUID, SOPInstanceUID)`` stored, and failures with reasons."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        if not self.failed:
            return 200
        return 409 if not self.stored else 202

    def dicom_json(self) -> dict[str, Any]:
        """The response body (application/dicom+json): ReferencedSOPSequence and FailedSOPSequence."""
        def ref(sop_class: str, sop_uid: str) -> dict[str, Any]:
            item: dict[str, Any] = {}
            if sop_class:
                item["00081150"] = {"vr": "UI", "Value": [sop_class]}
            if sop_uid:
                item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
            return item

        body: dict[str, Any] = {}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {**ref(c, u), "00081197": {"vr": "US", "Value": [r]}} for c, u, r, _ in self.failed]}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [ref(c, u) for c, u in self.stored]}
        return body


class StowReceiver:
    """Stores the parts of STOW-RS requests into one spool."""

    def __init__(self, spool: Spool, *, done_dir: Path | None = None, telemetry: Telemetry | None = None) -> None:
        self.spool = spool
        self.done_dir = done_dir
        self.telemetry = telemetry
        self.stored = 0
        self.refused = 0

    def store(self, parts: list[Part], study_uid: str | None, *, peer: str = "?") -> StowResult:
        """Check and store each part in order (each durable before the next); the result for the response."""
        result = StowResult()
        audit = self.telemetry is not None and self.telemetry.audit is not None
        transfer = Transfer("", peer)
        for index, part in enumerate(parts, start=1):
            received = _Received(part)
            try:
                verdict = admit(self.spool, received.parse, received.content, origin="dicomweb",
                                source=f"STOW-RS from {peer}: part {index}", part10=True, study_uid=study_uid,
                                done_dir=self.done_dir)
            finally:
                part.close()
            if not verdict.outcome.stored:
                self.refused += 1
                assert verdict.outcome.failure_reason is not None
                result.failed.append((verdict.sop_class_uid, verdict.sop_instance_uid, verdict.outcome.failure_reason,
                                      verdict.reason))
                continue
            self.stored += 1
            result.stored.append((verdict.sop_class_uid, verdict.sop_instance_uid))
            if audit:
                transfer.add(verdict.study_instance_uid, _patient_id(verdict.dataset), verdict.sop_class_uid)
        if audit and transfer.studies:
            assert self.telemetry is not None and self.telemetry.audit is not None
            self.telemetry.audit.received(transfer.studies.values(), via="DICOMweb STOW-RS", peer_ae="",
                                          peer_host=peer, our_ae=self.telemetry.ae_title)
        return result


class _Received:
    """One part as :func:`~..admit.admit` takes it: parsed as a Part 10 file, its bytes kept."""

    def __init__(self, part: Part) -> None:
        self.part = part
        self.data = b""

    def parse(self) -> Dataset:
        import pydicom

        if self.part.media_type not in ("", "application/dicom"):
            raise Refused(Outcome.CANNOT_UNDERSTAND, f"a part of type {self.part.media_type}, not application/dicom")
        self.data = self.part.read()
        stream = io.BytesIO(self.data)
        if deflate_bomb_at(stream):
            raise Refused(Outcome.CANNOT_UNDERSTAND, "its deflated data set inflates beyond the limit")
        try:
            return pydicom.dcmread(stream)  # a Part 10 file (preamble, DICM, file meta), as STOW-RS requires
        except Exception as exc:  # noqa: BLE001 - whatever the part holds, it is not a readable DICOM file
            raise Refused(Outcome.CANNOT_UNDERSTAND,
                          f"not a readable DICOM Part 10 file ({type(exc).__name__})") from None

    def content(self) -> bytes:
        return self.data


def _patient_id(ds: Any) -> str:
    try:
        return str(ds.get("PatientID", "") or "")
    except Exception:  # noqa: BLE001 - a broken value; the instance is stored already
        return ""
