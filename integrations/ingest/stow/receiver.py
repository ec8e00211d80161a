"""What the STOW-RS endpoint does with the parts of a complete request: check each, store it into
the spool exactly as the C-STORE handler does, and build the PS3.18 response.

Each part is checked on its own (a Part 10 file, parsable at any depth, not truncated, not a
deflate bomb, with its UIDs; its study the one of the URL, if the URL names one), then handed to
:meth:`Spool.add_bytes`, which returns only once the instance and its journal row are durable.
Only parts for which ``add_bytes`` returned are listed in ReferencedSOPSequence; the others are
in FailedSOPSequence with their FailureReason:

- 0xA700 out of resources: the spool is full or cannot write (try again later);
- 0xC210 cannot understand: not DICOM, not parsable, truncated, another media type, a bomb;
- 0xA900 data set does not match: its StudyInstanceUID is not the one of the URL.

The response status (:attr:`StowResult.http_status`): 200 when every part was stored, 409 when
none was, else 202. A duplicate counts as stored, as for C-STORE (the spool records it as skipped).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medblip_dicom.dicomfile import deflate_bomb_at
from medblip_dicom.reading import check_parsable

from medblip_dicom.integrations.ingest.stow.multipart import Part
from medblip_dicom.integrations.spool import Spool, SpoolFullError
from medblip_dicom.integrations.spool.files import instance_info
from medblip_dicom.integrations.ops.telemetry import Telemetry, Transfer

logger = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
STUDY_MISMATCH = 0xA900
_UNDEFINED_LENGTH = 0xFFFFFFFF


class PartRefused(Exception):
    """One part cannot be stored: `reason` is its FailureReason, the message says why (for the log)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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


def _truncated(ds: Any) -> str | None:
    """The tag of a top-level element whose value is shorter than its declared length, if any."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and length not in (None, _UNDEFINED_LENGTH) and len(value) < length:
            return str(tag)
    return None


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
            sop_class = sop_uid = ""
            try:
                data, ds = self._read(part)
                sop_class = str(ds.get("SOPClassUID", "") or "")
                sop_uid = str(ds.get("SOPInstanceUID", "") or "")
                self._check(ds)
                self._store(data, ds, study_uid)
            except PartRefused as exc:
                self.refused += 1
                logger.warning("STOW-RS from %s: part %d (SOPInstanceUID %s) refused, 0x%04X: %s", peer, index,
                               sop_uid or "?", exc.reason, exc)
                result.failed.append((sop_class, sop_uid, exc.reason, str(exc)))
                continue
            finally:
                part.close()
            self.stored += 1
            result.stored.append((sop_class, sop_uid))
            if audit:
                transfer.add(str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", "")), sop_class)
        if audit and transfer.studies:
            assert self.telemetry is not None and self.telemetry.audit is not None
            self.telemetry.audit.received(transfer.studies.values(), via="DICOMweb STOW-RS", peer_ae="",
                                          peer_host=peer, our_ae=self.telemetry.ae_title)
        return result

    def _read(self, part: Part) -> tuple[bytes, Any]:
        import pydicom

        if part.media_type not in ("", "application/dicom"):
            raise PartRefused(CANNOT_UNDERSTAND, f"a part of type {part.media_type}, not application/dicom")
        data = part.read()
        stream = io.BytesIO(data)
        if deflate_bomb_at(stream):
            raise PartRefused(CANNOT_UNDERSTAND, "its deflated data set inflates beyond the limit")
        try:
            ds = pydicom.dcmread(stream)  # a Part 10 file (preamble, DICM, file meta), as STOW-RS requires
            check_parsable(ds)
        except Exception as exc:  # noqa: BLE001 - whatever the part holds, it is not a readable DICOM file
            raise PartRefused(CANNOT_UNDERSTAND, f"not a readable DICOM Part 10 file ({type(exc).__name__})") from None
        return data, ds

    def _check(self, ds: Any) -> None:
        tag = _truncated(ds)
        if tag is not None:
            raise PartRefused(CANNOT_UNDERSTAND, f"truncated: element {tag} is shorter than its length")
        meta = getattr(ds, "file_meta", None)
        if meta is None or not meta.get("TransferSyntaxUID"):
            raise PartRefused(CANNOT_UNDERSTAND, "no TransferSyntaxUID in its file meta information")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if not str(ds.get(keyword, "") or "").strip():
                raise PartRefused(CANNOT_UNDERSTAND, f"no {keyword}")

    def _store(self, data: bytes, ds: Any, study_uid: str | None) -> None:
        info = instance_info(ds)
        if study_uid is not None and info.study_instance_uid != study_uid:
            raise PartRefused(STUDY_MISMATCH, "its StudyInstanceUID is not the study of the request URL")
        info = dataclasses.replace(info, sop_instance_uid=info.sop_instance_uid or None)
        try:
            admission = self.spool.add_bytes(data, origin="dicomweb", name=f"{info.sop_instance_uid}.dcm", info=info,
                                             done_dir=self.done_dir)
        except SpoolFullError as exc:
            raise PartRefused(OUT_OF_RESOURCES, f"spool full ({exc})") from None
        except OSError as exc:
            logger.error("STOW-RS: cannot write to the spool: %s", exc)
            raise PartRefused(OUT_OF_RESOURCES, "cannot write to the spool") from None
        logger.info("STOW-RS: SOPInstanceUID %s stored as job %d%s", info.sop_instance_uid, admission.job_id,
                    " (duplicate)" if admission.duplicate else "")
