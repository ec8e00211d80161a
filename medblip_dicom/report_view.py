"""Reading our own Structured Reports back: :class:`CaptionReport`.

:func:`medblip_dicom.report.build_report` writes the caption into a TID 2000 content tree; this is
its inverse. ``CaptionReport.from_dataset(sr)`` finds, by concept codes (never by position), the
caption (Finding, 121071 DCM), its note (Comment, 121106 DCM: the series a representative speaks
for), the device observer that wrote it (121012 UID, 121013 name, 121015
model name, which holds the model's version), the referenced source image (121324 DCM), the
document flags and the weights digest (Device Serial Number). ``medblip show-sr``, the services'
tests and everything that handles a written report read it through this view.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from medblip_dicom.errors import ReportError

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
FINDING = "121071"
COMMENT = "121106"
SOURCE_IMAGE = "121324"
DEVICE_OBSERVER_UID = "121012"
DEVICE_OBSERVER_NAME = "121013"
DEVICE_OBSERVER_MODEL_NAME = "121015"


@dataclass(frozen=True)
class CaptionReport:
    """What one of our SRs says, read from its data set."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    caption: str
    model_name: str
    model_version: str
    weights_sha256: str
    device_uid: str
    source_sop_class_uid: str
    source_sop_instance_uid: str
    source_frames: tuple[int, ...]
    verification_flag: str
    preliminary_flag: str
    completion_flag: str
    manufacturer: str
    note: str = ""

    @property
    def verified(self) -> bool:
        return self.verification_flag == "VERIFIED"

    @classmethod
    def from_dataset(cls, sr: Dataset, *, label: str | None = None) -> CaptionReport:
        """Read `sr`; raises :class:`~medblip_dicom.errors.ReportError` when it holds no caption report."""
        label = label or str(getattr(sr, "filename", None) or sr.get("SOPInstanceUID", "dataset"))
        if sr.get("Modality") != "SR" or "ContentSequence" not in sr:
            raise ReportError(label, "not a Structured Report (no SR content tree)")
        finding = _find(sr, FINDING, "TEXT")
        if finding is None:
            raise ReportError(label, "holds no Finding (121071, DCM) text: not a caption report")
        image = _find(finding, SOURCE_IMAGE, "IMAGE")
        ref = image.ReferencedSOPSequence[0] if image is not None and image.get("ReferencedSOPSequence") else None
        frames = ref.get("ReferencedFrameNumber") if ref is not None else None
        versions = value_list(sr.get("SoftwareVersions"))
        return cls(
            sop_instance_uid=str(sr.get("SOPInstanceUID", "")),
            series_instance_uid=str(sr.get("SeriesInstanceUID", "")),
            study_instance_uid=str(sr.get("StudyInstanceUID", "")),
            caption=str(finding.TextValue),
            model_name=_text(sr, DEVICE_OBSERVER_NAME) or str(sr.get("ManufacturerModelName", "")),
            model_version=_text(sr, DEVICE_OBSERVER_MODEL_NAME) or (str(versions[-1]) if versions else ""),
            weights_sha256=str(sr.get("DeviceSerialNumber", "")),
            device_uid=_text(sr, DEVICE_OBSERVER_UID, "UIDREF") or "",
            source_sop_class_uid=str(ref.ReferencedSOPClassUID) if ref is not None else "",
            source_sop_instance_uid=str(ref.ReferencedSOPInstanceUID) if ref is not None else "",
            source_frames=tuple(int(f) for f in value_list(frames)),
            verification_flag=str(sr.get("VerificationFlag", "")),
            preliminary_flag=str(sr.get("PreliminaryFlag", "")),
            completion_flag=str(sr.get("CompletionFlag", "")),
            manufacturer=str(sr.get("Manufacturer", "")),
            note=_text(sr, COMMENT) or "",
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CaptionReport:
        """Read an SR file (raises ReportError naming the file when it is not one of ours)."""
        label = os.fspath(path)
        try:
            ds = pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ReportError(label, f"cannot be read as DICOM ({exc})") from None
        return cls.from_dataset(ds, label=label)


def content_items(item: Dataset) -> Iterator[Dataset]:
    """Every content item below `item`, depth first."""
    for child in item.get("ContentSequence", []):
        yield child
        yield from content_items(child)


def _code(item: Dataset) -> str | None:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else None


def _find(item: Dataset, concept: str, value_type: str) -> Dataset | None:
    return next((c for c in content_items(item) if _code(c) == concept and c.get("ValueType") == value_type), None)


def _text(sr: Dataset, concept: str, value_type: str = "TEXT") -> str | None:
    item = _find(sr, concept, value_type)
    if item is None:
        return None
    return str(item.UID if value_type == "UIDREF" else item.TextValue)


def value_list(value: object) -> list[object]:
    """A DICOM value as a list (multi-valued, single or absent)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)  # type: ignore[arg-type]
    return [value]
