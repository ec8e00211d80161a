"""Build the caption's DICOM Comprehensive SR (TID 2000) with highdicom, and write it atomically.

The report contract (README, "The Structured Report"):

- Comprehensive SR Storage, explicit VR little endian; same Patient and Study as the source, a
  new Series (Modality SR) shared by all reports on one source series from one model.
- Root CONTAINER (18748-4, LN, "Diagnostic Imaging Report") with template DCMR 2000, holding:
  language of content (en-US); observation context with a *device* observer (the model's UID,
  name and version); a Findings container (121070, DCM) whose TEXT Finding (121071, DCM) holds the
  caption and is INFERRED FROM the source IMAGE (121324, DCM, "Source image").
- CurrentRequestedProcedureEvidenceSequence references the source instance.
- VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY, CompletionFlag PARTIAL and a series
  description saying the text is machine-generated and not for diagnostic use.
- SOPInstanceUID derived from the source SOPInstanceUID and the model's weights digest: the same
  instance captioned by the same model always gets the same UID, so a re-send never creates a
  second report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medblip_dicom import __version__
from medblip_dicom.captioner import ModelIdentity
from medblip_dicom.errors import ReportError
from medblip_dicom.uids import stable_uid

logger = logging.getLogger(__name__)

#: Series Description of every SR (LO, at most 64 characters).
SERIES_DESCRIPTION = "AI caption: machine-generated, UNVERIFIED, not for diagnosis"
#: Series Number given to the SR series (derived reports conventionally sort after the images).
SERIES_NUMBER = 990
MANUFACTURER = "medblip-dicom"

DIAGNOSTIC_IMAGING_REPORT = CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
ENGLISH_US = CodedConcept("en-US", "RFC5646", "English (United States)")

# Patient and study attributes copied from the source; type 2 ones become empty when absent.
_EVIDENCE_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                   "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_EVIDENCE_COPY = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                  "SeriesInstanceUID", "StudyDescription", "IssuerOfPatientID", "OtherPatientIDsSequence",
                  "PatientAge", "PatientSize", "PatientWeight", "PatientComments", "EthnicGroup",
                  *_EVIDENCE_TYPE2)
_VALID_SEX = {"M", "F", "O"}


def report_uids(source: Dataset, identity: ModelIdentity) -> tuple[str, str]:
    """Return ``(series_uid, sop_instance_uid)`` of the SR for `source` written by `identity`.

    Both are deterministic: 2.25 UIDs hashed from the source UIDs and the model's weights digest.
    """
    series = stable_uid("medblip-dicom/sr-series", str(source.SeriesInstanceUID), identity.weights_sha256)
    instance = stable_uid("medblip-dicom/sr", str(source.SOPInstanceUID), identity.weights_sha256)
    return series, instance


def _evidence_view(source: Dataset) -> Dataset:
    """The source's identifying, patient and study attributes only (no pixels), for highdicom.

    Absent type 2 attributes are present but empty, so a source without birth date, sex or
    accession number still yields a valid report; a PatientSex outside M/F/O is emptied.
    """
    view = Dataset()
    for keyword in _EVIDENCE_COPY:
        if keyword in source:
            view[keyword] = source[keyword]
    for keyword in _EVIDENCE_TYPE2:
        if keyword not in view or view[keyword].value is None:
            setattr(view, keyword, "")
    if str(view.PatientSex).strip().upper() not in _VALID_SEX:
        view.PatientSex = ""
    return view


def _content(caption: str, source: Dataset, identity: ModelIdentity, frame_number: int | None) -> hd.sr.ContainerContentItem:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=identity.device_uid,
        name=identity.name[:64],
        model_name=identity.version[:64],
    )
    observation = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    image = hd.sr.ImageContentItem(
        name=codes.DCM.SourceImage,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=frame_number,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )
    finding = hd.sr.TextContentItem(
        name=codes.DCM.Finding, value=caption, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    finding.ContentSequence = hd.sr.ContentSequence([image])
    findings = hd.sr.ContainerContentItem(
        name=codes.DCM.Findings, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    findings.ContentSequence = hd.sr.ContentSequence([finding])

    root = hd.sr.ContainerContentItem(name=DIAGNOSTIC_IMAGING_REPORT, template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence(
        [*hd.sr.LanguageOfContentItemAndDescendants(language=ENGLISH_US), *observation, findings]
    )
    return root


def build_report(
    source: Dataset,
    caption: str,
    identity: ModelIdentity,
    *,
    frame_index: int = 0,
    label: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """Build the Comprehensive SR that records `caption` for `source` (see the module docstring).

    `frame_index` (0-based) is referenced as a frame number only for multi-frame sources.
    Raises :class:`~medblip_dicom.errors.ReportError` naming the source when the caption is empty
    or highdicom rejects the content.
    """
    label = label or str(source.get("SOPInstanceUID", "dataset"))
    caption = " ".join(caption.split())
    if not caption:
        raise ReportError(f"{label}: the model produced an empty caption; no report written")
    multi_frame = int(source.get("NumberOfFrames") or 1) > 1
    series_uid, sop_uid = report_uids(source, identity)
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=[_evidence_view(source)],
            content=_content(caption, source, identity, frame_index + 1 if multi_frame else None),
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=_instance_number(source),
            manufacturer=MANUFACTURER,
            is_complete=False,
            is_final=False,
            is_verified=False,
            series_description=SERIES_DESCRIPTION,
            manufacturer_model_name=identity.name[:64],
            software_versions=[f"medblip-dicom {__version__}", identity.version[:64]],
            device_serial_number=identity.weights_sha256,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ReportError(f"{label}: cannot build the Structured Report ({type(exc).__name__}: {exc})") from None
    return sr


def _instance_number(source: Dataset) -> int:
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return number if number > 0 else 1


def report_filename(sr: Dataset) -> str:
    """File name of an SR in an output folder: its SOPInstanceUID (digits and dots only) + .dcm."""
    uid = str(sr.SOPInstanceUID)
    if not uid or any(c not in "0123456789." for c in uid) or len(uid) > 64:
        raise ReportError(f"refusing to use {uid!r} as a file name: not a valid UID")
    return f"{uid}.dcm"


def write_report(sr: Dataset, output_dir: str | os.PathLike[str]) -> Path:
    """Write `sr` into `output_dir` atomically (temporary file, fsync, rename); return its path.

    A reader never sees a partial file, and writing the same report again replaces it in place.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / report_filename(sr)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=out)
    try:
        with os.fdopen(fd, "wb") as fh:
            sr.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(out)
    return target


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
