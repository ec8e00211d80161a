"""Reading our own Structured Reports back: :class:`CaptionReport`.

:func:`medblip_dicom.report.build_report` writes the caption into a TID 2000 content tree; this is
its inverse. ``CaptionReport.from_dataset(sr)`` finds, by concept codes (never by position), the
caption (Finding, 121071 DCM), its note (Comment, 121106 DCM: the series a representative speaks
for), the device observer that wrote it (121012 UID, 121013 name, 121015
model name, which holds the model's architecture; in reports written before architectures were
named, its version), the prompt of a model given one (Algorithm Parameters, 111002 DCM), the
model's version (the last Software Versions value), the referenced source image (121324 DCM), the
document flags and the weights digest (Device Serial Number). ``medblip show-sr``, the services'
tests and everything that handles a written report read it through this view.

:func:`read_document` reads any document the services deliver, the reports and the review's IOCM
rejection notes alike, into a :class:`ReportDocument`: which version of a report it is (the AI
report, the first signed one, an amendment, a rejection), the report it is a version of, the
text, the model, the reviewer, the patient and the order. The HL7 and FHIR sinks say what a
report is from this alone, so the result status a RIS shows follows what the document says.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset

from medblip_dicom.errors import ReportError
from medblip_dicom.identity import ModelIdentity

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
REJECTED_FOR_QUALITY = "113001"  # the document title of an IOCM rejection note
KEY_OBJECT_DESCRIPTION = "113012"
PERSON_OBSERVER_NAME = "121008"
FINDING = "121071"
COMMENT = "121106"
SOURCE_IMAGE = "121324"
DEVICE_OBSERVER_UID = "121012"
DEVICE_OBSERVER_NAME = "121013"
DEVICE_OBSERVER_MODEL_NAME = "121015"
ALGORITHM_PARAMETERS = "111002"  # the prompt of a model given one


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
    architecture: str = ""
    prompt: str = ""

    @property
    def verified(self) -> bool:
        return self.verification_flag == "VERIFIED"

    @property
    def identity(self) -> ModelIdentity:
        """The identity of the model that wrote the caption, as far as the report records it."""
        return ModelIdentity(self.model_name, self.model_version, self.weights_sha256, "report",
                             architecture=self.architecture, prompt=self.prompt)

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
        device_model = _text(sr, DEVICE_OBSERVER_MODEL_NAME) or ""
        version = (str(versions[-1]) if len(versions) > 1 else "") or device_model
        return cls(
            sop_instance_uid=str(sr.get("SOPInstanceUID", "")),
            series_instance_uid=str(sr.get("SeriesInstanceUID", "")),
            study_instance_uid=str(sr.get("StudyInstanceUID", "")),
            caption=str(finding.TextValue),
            model_name=_text(sr, DEVICE_OBSERVER_NAME) or str(sr.get("ManufacturerModelName", "")),
            model_version=version,
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
            architecture=device_model if device_model != version else "",
            prompt=_text(sr, ALGORITHM_PARAMETERS) or "",
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


#: What a delivered document is: the AI report, the first signed version, an amendment, a rejection note.
AI, SIGNED, AMENDED, REJECTED = "ai", "signed", "amended", "rejected"


@dataclass(frozen=True)
class Patient:
    """The patient module a document copied from its source (never logged: no repr)."""

    name: str = ""
    id: str = ""
    issuer: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class Order:
    """The order a document answers: the accession number, and the placer and filler order numbers
    and requested procedure ID where the document's Referenced Request Sequence holds them."""

    accession_number: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    requested_procedure_id: str = ""


@dataclass(frozen=True)
class ReportDocument:
    """One delivered document as the result interfaces (HL7 v2, FHIR) need it.

    ``first_uid`` is the AI report this document is a version of (its own UID for the AI report;
    the rejected report for a rejection note): every version of one report shares it. ``when`` is
    the document's content date and time (DICOM DT); ``reviewer``/``organization``/``verified_at``
    are the verifying observer of a signed version, or the person who rejected.
    """

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    first_uid: str
    text: str
    when: str
    model_name: str = ""
    model_version: str = ""
    weights_sha256: str = ""
    device_uid: str = ""
    reviewer: str = field(default="", repr=False)
    organization: str = ""
    verified_at: str = ""
    patient: Patient = field(default_factory=Patient, repr=False)
    order: Order = field(default_factory=Order, repr=False)


#: Keyword arguments of highdicom's SOP class constructors -> the attribute of our SR that fills them.
_PATIENT_AND_STUDY = {"patient_id": "PatientID", "patient_name": "PatientName",
                      "patient_birth_date": "PatientBirthDate", "patient_sex": "PatientSex",
                      "accession_number": "AccessionNumber", "study_id": "StudyID", "study_date": "StudyDate",
                      "study_time": "StudyTime", "referring_physician_name": "ReferringPhysicianName"}


def patient_and_study(sr: Dataset) -> dict[str, object]:
    """highdicom keyword arguments that put a derived object (a Secondary Capture, a PDF report) in
    the patient and study of one of our SRs: the study UID, and each patient and study attribute the
    SR holds (None where it is empty, which highdicom writes as an empty type 2 value)."""
    arguments: dict[str, object] = {"study_instance_uid": str(sr.StudyInstanceUID)}
    for argument, keyword in _PATIENT_AND_STUDY.items():
        value = sr.get(keyword)
        arguments[argument] = value if value not in (None, "") else None
    return arguments


def read_document(ds: Dataset, *, label: str | None = None) -> ReportDocument:
    """What `ds` (one of our SRs, or the review's rejection note) is; raises
    :class:`~medblip_dicom.errors.ReportError` for anything else."""
    label = label or str(getattr(ds, "filename", None) or ds.get("SOPInstanceUID", "dataset"))
    common = {"sop_class_uid": str(ds.get("SOPClassUID", "")), "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
              "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
              "study_instance_uid": str(ds.get("StudyInstanceUID", "")), "when": _content_datetime(ds),
              "patient": _patient(ds), "order": _order(ds)}
    if common["sop_class_uid"] == KEY_OBJECT_SELECTION:
        if _code(ds) != REJECTED_FOR_QUALITY:
            raise ReportError(label, "a Key Object Selection that is not a rejection note (113001, DCM)")
        evidence = ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        rejected = [str(ref.ReferencedSOPInstanceUID) for study in evidence
                    for series in study.get("ReferencedSeriesSequence", [])
                    for ref in series.get("ReferencedSOPSequence", [])]
        if not rejected:
            raise ReportError(label, "a rejection note that references no report")
        person = next((c for c in content_items(ds) if _code(c) == PERSON_OBSERVER_NAME), None)
        return ReportDocument(kind=REJECTED, first_uid=rejected[0], text=_text(ds, KEY_OBJECT_DESCRIPTION) or "",
                              reviewer=str(person.PersonName) if person is not None else "", **common)
    report = CaptionReport.from_dataset(ds, label=label)
    model = {"model_name": report.model_name, "model_version": report.model_version,
             "weights_sha256": report.weights_sha256, "device_uid": report.device_uid}
    if not report.verified:
        return ReportDocument(kind=AI, first_uid=report.sop_instance_uid, text=report.caption, **model, **common)
    from medblip_dicom.report import ai_report_uid

    # Every signed version of one AI report shares a series: a predecessor in this document's own
    # series is an earlier signed version, so this one amends it.
    predecessors = [str(series.SeriesInstanceUID) for study in ds.get("PredecessorDocumentsSequence", [])
                    for series in study.get("ReferencedSeriesSequence", [])]
    observer = (ds.get("VerifyingObserverSequence") or [Dataset()])[0]
    return ReportDocument(
        kind=AMENDED if report.series_instance_uid in predecessors else SIGNED,
        first_uid=ai_report_uid(report.source_sop_instance_uid, report.identity.content_key), text=report.caption,
        reviewer=str(observer.get("VerifyingObserverName", "") or ""),
        organization=str(observer.get("VerifyingOrganization", "") or ""),
        verified_at=str(observer.get("VerificationDateTime", "") or ""), **model, **common)


def _content_datetime(ds: Dataset) -> str:
    date, time = str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or "")
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    return f"{date}{time}{offset}" if date else ""


def _patient(ds: Dataset) -> Patient:
    return Patient(name=str(ds.get("PatientName", "") or ""), id=str(ds.get("PatientID", "") or ""),
                   issuer=str(ds.get("IssuerOfPatientID", "") or ""),
                   birth_date=str(ds.get("PatientBirthDate", "") or ""), sex=str(ds.get("PatientSex", "") or ""))


def _order(ds: Dataset) -> Order:
    request = (ds.get("ReferencedRequestSequence") or [Dataset()])[0]

    def value(keyword: str, where: Dataset = request) -> str:
        return str(where.get(keyword, "") or "")

    return Order(accession_number=value("AccessionNumber", ds) or value("AccessionNumber"),
                 placer_order_number=value("PlacerOrderNumberImagingServiceRequest"),
                 filler_order_number=value("FillerOrderNumberImagingServiceRequest"),
                 requested_procedure_id=value("RequestedProcedureID"))
