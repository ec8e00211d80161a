"""One admission path for the producers that answer a sender: C-STORE (:mod:`.node`) and STOW-RS
(:mod:`.stow.receiver`).

Each protocol turns what it received into two callables, one that parses the data set and one
that gives the bytes to keep; :func:`admit` does everything after that the same way for both:

1. the parse check: the data set parses (:func:`~medblip_dicom.reading.check_parsable`: every
   element's VR known, every sequence at any depth; a header the node read with :func:`.scan.scan`
   passed it as it was read); for a Part 10 file (STOW-RS) also a file meta
   header with a TransferSyntaxUID, no top-level value shorter than its declared length, and the
   SOPClassUID, SOPInstanceUID and StudyInstanceUID;
2. the header facts, read once from that parsed data set (:func:`~..spool.files.instance_info`);
   a request that names its study (a STOW-RS URL) must match;
3. the admission into the spool (:meth:`~..spool.Spool.add_bytes`), which returns only once the
   instance and its journal row are on disk: nothing is acknowledged before it is durable;

and maps every outcome to what each protocol answers (:class:`Outcome`): a DIMSE status for
C-STORE, a FailureReason for STOW-RS. A duplicate and the node's own output are stored (the spool
records them as skipped) and acknowledged like any instance.

Logging: a refusal is a warning (an error when the spool cannot write), naming the instance's UID
and the status; a stored instance is one DEBUG line. The services log one INFO line per
association or request instead (what it brought), so that a busy node does not write a line per
image.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from medblip_dicom.errors import MedblipError
from medblip_dicom.reading import check_parsable

from medblip_dicom.integrations.ingest.scan import ScannedHeader
from medblip_dicom.integrations.spool import JobState, Spool, SpoolFullError
from medblip_dicom.integrations.spool.files import InstanceInfo, instance_info

logger = logging.getLogger(__name__)

_UNDEFINED_LENGTH = 0xFFFFFFFF
#: What a Part 10 file (a STOW-RS part) must name.
PART10_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")


class Outcome(enum.Enum):
    """What became of one received instance: its C-STORE status, its STOW-RS FailureReason (None:
    stored) and the ErrorComment a refusal carries (at most 64 characters)."""

    STORED = ("stored", 0x0000, None, "")
    DUPLICATE = ("duplicate", 0x0000, None, "")
    OWN_OUTPUT = ("own output", 0x0000, None, "")
    CANNOT_UNDERSTAND = ("cannot understand", 0xC210, 0xC210, "data set cannot be decoded")
    STUDY_MISMATCH = ("another study", 0xA900, 0xA900, "StudyInstanceUID is not the request's")
    SPOOL_FULL = ("spool full", 0xA700, 0xA700, "spool full, try again later")
    CANNOT_WRITE = ("cannot write", 0xA700, 0xA700, "cannot write to the spool")
    INTERNAL_ERROR = ("internal error", 0x0110, 0x0110, "internal error")

    def __init__(self, label: str, dimse_status: int, failure_reason: int | None, comment: str) -> None:
        self.label = label
        self.dimse_status = dimse_status
        self.failure_reason = failure_reason
        self.comment = comment

    @property
    def stored(self) -> bool:
        """True when the instance is durably in the spool (the sender gets a success)."""
        return self.failure_reason is None


class Refused(MedblipError):
    """An instance that will not be stored: `outcome` says how it is answered, the message why
    (for the log). `comment` replaces the outcome's ErrorComment when given."""

    def __init__(self, outcome: Outcome, reason: str, comment: str | None = None) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.comment = comment


@dataclass(frozen=True)
class Verdict:
    """The answer for one instance, with what the caller's counters, audit and response need."""

    outcome: Outcome
    reason: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    job_id: int | None = None
    comment: str = ""
    #: The parsed data set (for the audit message, which names the patient); never logged.
    dataset: Any = field(default=None, repr=False, compare=False)

    def dimse_response(self) -> int | Dataset:
        """The C-STORE response: 0x0000, or a status data set with its ErrorComment."""
        if self.outcome.stored:
            return self.outcome.dimse_status
        status = Dataset()
        status.Status = self.outcome.dimse_status
        status.ErrorComment = (self.comment or self.outcome.comment)[:64]
        return status


def truncated_element(ds: Dataset) -> str | None:
    """The tag of a top-level element whose value is shorter than its declared length, if any
    (pydicom reads a file cut short without an error, leaving the last value short)."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and length not in (None, _UNDEFINED_LENGTH) and len(value) < length:
            return str(tag)
    return None


def check_part10(ds: Dataset) -> None:
    """What a stored Part 10 file must also have; raises :class:`Refused` naming what it lacks."""
    tag = truncated_element(ds)
    if tag is not None:
        raise Refused(Outcome.CANNOT_UNDERSTAND, f"truncated: element {tag} is shorter than its length")
    meta = getattr(ds, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        raise Refused(Outcome.CANNOT_UNDERSTAND, "no TransferSyntaxUID in its file meta information")
    for keyword in PART10_REQUIRED:
        if not str(ds.get(keyword, "") or "").strip():
            raise Refused(Outcome.CANNOT_UNDERSTAND, f"no {keyword}")


def admit(spool: Spool, parse: Callable[[], Dataset], content: Callable[[], bytes], *, origin: str, source: str,
          transfer_syntax: str | None = None, sop_class_uid: str = "", sop_instance_uid: str = "",
          part10: bool = False, study_uid: str | None = None,
          done_dir: str | os.PathLike[str] | None = None) -> Verdict:
    """Check, read and store one received instance; never raises for anything the sender sent.

    `parse` returns the data set (or raises :class:`Refused`, or anything else for a data set that
    cannot be decoded); `content` returns the bytes to store (a Part 10 file). `sop_class_uid` and
    `sop_instance_uid` are what the request itself named (C-STORE), used where the data set has
    none. `part10` applies :func:`check_part10`; `study_uid` is the study the request is for.
    `source` starts each log line (``C-STORE from CT01``).
    """
    ds: Dataset | None = None
    info = InstanceInfo()
    try:
        try:
            ds = parse()
            if not isinstance(ds, ScannedHeader):  # a scanned header passed the check as it was read
                check_parsable(ds)  # VRs and sequences, without converting every value
            info = instance_info(ds, transfer_syntax_uid=transfer_syntax)
            if part10:
                check_part10(ds)
            if study_uid is not None and info.study_instance_uid != study_uid:
                raise Refused(Outcome.STUDY_MISMATCH, "its StudyInstanceUID is not the study of the request URL")
            data = content()
        except Refused:
            raise
        except Exception as exc:  # noqa: BLE001 - any decode failure of the peer's data set
            raise Refused(Outcome.CANNOT_UNDERSTAND, f"cannot be decoded ({type(exc).__name__})") from None
        sop_uid = info.sop_instance_uid or sop_instance_uid or None
        if sop_uid != info.sop_instance_uid or (not info.sop_class_uid and sop_class_uid):
            info = InstanceInfo(sop_uid, info.sop_class_uid or sop_class_uid or None, info.study_instance_uid,
                                info.series_instance_uid, info.transfer_syntax_uid, info.manufacturer, info.facts)
        admission = _store(spool, data, info, origin=origin, done_dir=done_dir, source=source)
    except Refused as refused:
        verdict = Verdict(refused.outcome, refused.reason, info.sop_class_uid or sop_class_uid,
                          info.sop_instance_uid or sop_instance_uid, info.study_instance_uid or "",
                          comment=refused.comment or "", dataset=ds)
        _log_refusal(source, verdict)
        return verdict
    outcome = Outcome.STORED if admission.state is not JobState.SKIPPED else \
        Outcome.DUPLICATE if admission.duplicate else Outcome.OWN_OUTPUT
    logger.debug("%s: SOPInstanceUID %s stored as job %d (%s)", source, info.sop_instance_uid, admission.job_id,
                 outcome.label)
    return Verdict(outcome, "", info.sop_class_uid or "", info.sop_instance_uid or "",
                   info.study_instance_uid or "", admission.job_id, dataset=ds)


def _store(spool: Spool, data: bytes, info: InstanceInfo, *, origin: str,
           done_dir: str | os.PathLike[str] | None, source: str) -> Any:
    """:meth:`Spool.add_bytes`, its failures as :class:`Refused`."""
    try:
        return spool.add_bytes(data, origin=origin, name=f"{info.sop_instance_uid or 'instance'}.dcm", info=info,
                               done_dir=done_dir)
    except SpoolFullError as exc:
        raise Refused(Outcome.SPOOL_FULL, str(exc)) from None
    except OSError as exc:
        raise Refused(Outcome.CANNOT_WRITE, f"cannot write to the spool: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - never let a bug look like success
        logger.exception("%s: SOPInstanceUID %s not stored, the spool failed (%s)", source,
                         info.sop_instance_uid or "?", type(exc).__name__)
        raise Refused(Outcome.INTERNAL_ERROR, f"internal error ({type(exc).__name__})") from None


def _log_refusal(source: str, verdict: Verdict) -> None:
    if verdict.outcome is Outcome.INTERNAL_ERROR:
        return  # logged with its traceback where it happened
    level = logging.ERROR if verdict.outcome is Outcome.CANNOT_WRITE else logging.WARNING
    logger.log(level, "%s: SOPInstanceUID %s refused, 0x%04X: %s", source, verdict.sop_instance_uid or "?",
               verdict.outcome.dimse_status, verdict.reason)
