"""Build the caption's DICOM Comprehensive SR (TID 2000) with highdicom, and write it atomically.

The report contract (docs/sr-contract.md):

- Comprehensive SR Storage, explicit VR little endian; same Patient and Study as the source, a
  new Series (Modality SR) shared by all reports on one source series from one model.
- Root CONTAINER (18748-4, LN, "Diagnostic Imaging Report") with template DCMR 2000, holding:
  language of content (en-US); observation context with a *device* observer (the model's UID,
  name and, as its model name, its architecture; the version is in SoftwareVersions) and, for a
  model given an instruction, the prompt as Algorithm Parameters (111002, DCM); a Findings
  container (121070, DCM) whose TEXT Finding (121071, DCM) holds the caption and is INFERRED FROM
  the source IMAGE (121324, DCM, "Source image").
- CurrentRequestedProcedureEvidenceSequence references the source instance.
- VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY, CompletionFlag PARTIAL and a series
  description saying the text is machine-generated and not for diagnostic use.
- SOPInstanceUID derived from the source SOPInstanceUID and the model's weights digest (and its
  prompt, when it has one): the same instance captioned by the same model always gets the same
  UID, so a re-send never creates a second report.
- Text through one rule (:mod:`medblip_dicom.dicomtext`): the caption, note and model names are
  machine text (characters their VR refuses removed); patient and study values copied from the
  source are decoded with the source's character set; the report declares ``ISO_IR 192`` (UTF-8)
  when any value is not ASCII, whatever the source declared.
"""

from __future__ import annotations

import copy
import io
import logging
import os
from pathlib import Path

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VM
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value
from pydicom.sr.codedict import codes

from medblip_dicom import __version__
from medblip_dicom.dicomfile import number_of_frames
from medblip_dicom.dicomtext import CHARACTER_SET_VRS, declare_character_set, decoded_copy, dicom_text, first_refused
from medblip_dicom.errors import ReportError
from medblip_dicom.fileio import atomic_write_bytes
from medblip_dicom.identity import ModelIdentity
from medblip_dicom.uids import stable_uid

logger = logging.getLogger(__name__)

#: Series Description of every SR (LO, at most 64 characters).
SERIES_DESCRIPTION = "AI caption: machine-generated, UNVERIFIED, not for diagnosis"
#: Series Number given to the SR series (derived reports conventionally sort after the images).
SERIES_NUMBER = 990
MANUFACTURER = "medblip-dicom"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

DIAGNOSTIC_IMAGING_REPORT = CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
ENGLISH_US = CodedConcept("en-US", "RFC5646", "English (United States)")

# Patient and study attributes copied from the source; type 2 ones become empty when absent.
_EVIDENCE_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                   "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_EVIDENCE_COPY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                  "SeriesInstanceUID", "StudyDescription", "IssuerOfPatientID", "OtherPatientIDsSequence",
                  "PatientAge", "PatientSize", "PatientWeight", "PatientComments", "EthnicGroup",
                  *_EVIDENCE_TYPE2)
_VALID_SEX = {"M", "F", "O"}


def report_uids(source: Dataset, identity: ModelIdentity) -> tuple[str, str]:
    """Return ``(series_uid, sop_instance_uid)`` of the SR for `source` written by `identity`.

    Both are deterministic: 2.25 UIDs hashed from the source UIDs and the model's weights digest
    (with its prompt, for a model given one: :attr:`ModelIdentity.content_key`).
    """
    series = stable_uid("medblip-dicom/sr-series", str(source.SeriesInstanceUID), identity.content_key)
    return series, ai_report_uid(str(source.SOPInstanceUID), identity.content_key)


def ai_report_uid(source_sop_instance_uid: str, content_key: str) -> str:
    """The SOPInstanceUID of the AI report on this source instance by the model with this content key
    (its weights digest, or weights and prompt: :attr:`ModelIdentity.content_key`): what every later
    version of that report (signed, amended) can be traced back to."""
    return stable_uid("medblip-dicom/sr", source_sop_instance_uid, content_key)


def evidence_view(source: Dataset) -> Dataset:
    """The source's identifying, patient and study attributes only (no pixels), for highdicom.

    Absent type 2 attributes are present but empty, so a source without birth date, sex or
    accession number still yields a valid report; a PatientSex outside M/F/O is emptied. Text is
    decoded with the source's character set and the view declares none: the report declares its own
    (:func:`~medblip_dicom.dicomtext.declare_character_set`).
    """
    view = Dataset()
    for keyword in _EVIDENCE_COPY:
        if keyword in source and _is_valid(source[keyword]):
            view[keyword] = decoded_copy(source[keyword])  # never share elements with the source
    for keyword in _EVIDENCE_TYPE2:
        if keyword not in view or view[keyword].value is None:
            setattr(view, keyword, "")
    if str(view.PatientSex).strip().upper() not in _VALID_SEX:
        view.PatientSex = ""
    return view


#: What an SR's Referenced Request Sequence item holds (PS3.3 C.17.2): StudyInstanceUID (type 1),
#: the rest type 2 (present, empty when the source does not say).
_REQUEST_TYPE2 = ("AccessionNumber", "PlacerOrderNumberImagingServiceRequest",
                  "FillerOrderNumberImagingServiceRequest", "RequestedProcedureID",
                  "RequestedProcedureDescription")


def requested_procedures(source: Dataset) -> list[Dataset] | None:
    """The source's requests (its Request Attributes Sequence) as the SR's Referenced Request Sequence.

    The orders a report answers travel with it, so a RIS receiving the result (HL7 ORC/OBR, a FHIR
    ``basedOn``) can match it to the order: accession number, placer and filler order numbers,
    requested procedure. None when the source names no request. Values that break their VR are
    left empty, as for the other copied attributes.
    """
    items = []
    for request in source.get("RequestAttributesSequence") or []:
        item = Dataset()
        item.StudyInstanceUID = str(request.get("StudyInstanceUID") or source.get("StudyInstanceUID"))
        item.ReferencedStudySequence = []
        for keyword in _REQUEST_TYPE2:
            where = request if keyword in request else source if keyword == "AccessionNumber" else None
            if where is not None and keyword in where and _is_valid(where[keyword]):
                item[keyword] = decoded_copy(where[keyword])
            else:
                setattr(item, keyword, "")
        codes = request.get("RequestedProcedureCodeSequence")
        item.RequestedProcedureCodeSequence = [copy.deepcopy(c) for c in codes] if codes else []
        items.append(item)
    return items or None


def _is_valid(elem: DataElement) -> bool:
    """False for a value that breaks its VR (e.g. a 64-character Study ID) or its value
    multiplicity (two names in PatientName, VM 1): such a value is not copied into the report,
    which must stay conformant whatever the source holds."""
    if elem.VR == "SQ":
        return True
    values = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
    if not vm_allows(_dictionary_vm(elem.tag), len(values)):
        logger.debug("not copying %s into the report: %d values break its VM", elem.keyword, len(values))
        return False
    try:
        for value in values:
            if value not in (None, ""):
                validate_value(elem.VR, value, config.RAISE)
                if elem.VR in CHARACTER_SET_VRS and first_refused(str(value), elem.VR) is not None:
                    raise ValueError("a character its VR does not allow")
    except (ValueError, TypeError):
        logger.debug("not copying invalid %s into the report", elem.keyword)
        return False
    return True


def _dictionary_vm(tag: int) -> str:
    try:
        return dictionary_VM(tag)
    except KeyError:  # private or unknown: nothing to hold it to
        return "1-n"


def vm_allows(vm: str, count: int) -> bool:
    """True when `count` values satisfy a data dictionary VM such as ``1``, ``1-3``, ``1-n`` or ``2-2n``.

    An empty value (0 values) always does: whether an attribute may be empty is its type, not its VM.
    """
    if count <= 1:
        return True if count == 0 else vm.split("-", 1)[0] in ("1", "1n")
    low, _, high = vm.partition("-")
    if not high:
        return count == int(low)
    if high.endswith("n"):
        step = int(high[:-1] or 1)
        return count >= int(low) and count % step == 0
    return int(low) <= count <= int(high)


def content_tree(caption: str, source: Dataset, identity: ModelIdentity, frame_number: int | None,
                 note: str | None, *, person: hd.sr.PersonObserverIdentifyingAttributes | None = None,
                 extra_items: tuple[hd.sr.ContentItem, ...] = ()) -> hd.sr.ContainerContentItem:
    """The TID 2000 tree of a report: language, observers, Findings with the caption.

    The review station's signed reports add the reviewer as a `person` observer (before the
    device, as TID 1001 orders them) and `extra_items` beside the finding (the review outcome).
    `caption` and `note` pass :func:`~medblip_dicom.dicomtext.dicom_text` as machine text: a
    caller's checked text passes unchanged, anything else loses what a TEXT (UT) value refuses.
    """
    caption = dicom_text(caption, "UT", what="the finding", machine=True)
    note = dicom_text(note, "UT", what="the note", machine=True) if note else None
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=identity.device_uid,
        name=_lo(identity.name),
        model_name=_lo(identity.architecture or identity.version),  # the version is in SoftwareVersions
    )
    observation = hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Person, observer_identifying_attributes=person
        ) if person is not None else None,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        ),
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
    items = [finding]
    if note:
        # What the finding speaks for beyond its own image (one caption for a whole series).
        items.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=note,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    items.extend(extra_items)
    findings.ContentSequence = hd.sr.ContentSequence(items)

    root = hd.sr.ContainerContentItem(name=DIAGNOSTIC_IMAGING_REPORT, template_id="2000")
    # A model given an instruction: the prompt, as Algorithm Parameters (111002, DCM) of the observation.
    prompt = [hd.sr.TextContentItem(name=codes.DCM.AlgorithmParameters, value=identity.prompt,
                                    relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT)
              ] if identity.prompt else []
    root.ContentSequence = hd.sr.ContentSequence(
        [*hd.sr.LanguageOfContentItemAndDescendants(language=ENGLISH_US), *observation, *prompt, findings]
    )
    return root


def build_report(
    source: Dataset,
    caption: str,
    identity: ModelIdentity,
    *,
    frame_index: int = 0,
    label: str | None = None,
    note: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """Build the Comprehensive SR that records `caption` for `source` (see the module docstring).

    `frame_index` (0-based) is referenced as a frame number only for multi-frame sources. `note`,
    when given, is a Comment (121106, DCM) beside the finding: the representative of a series says
    that its caption stands for the whole series. The caption is machine text: characters a TEXT
    value refuses (controls, separators) are removed and whitespace collapsed; Unicode is kept.
    Raises :class:`~medblip_dicom.errors.ReportError` naming the source when the caption is empty
    or highdicom rejects the content.
    """
    label = label or str(source.get("SOPInstanceUID", "dataset"))
    caption = dicom_text(caption, "UT", what="the caption", machine=True)
    if not caption:
        raise ReportError(label, "the model produced an empty caption; no report written")
    multi_frame = number_of_frames(source) > 1 and is_multiframe_class(str(source.SOPClassUID))
    series_uid, sop_uid = report_uids(source, identity)
    evidence = evidence_view(source)
    content = content_tree(caption, source, identity, frame_index + 1 if multi_frame else None, note)

    def make(evidence_view: Dataset) -> hd.sr.ComprehensiveSR:
        return hd.sr.ComprehensiveSR(
            evidence=[evidence_view],
            content=content,
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=_instance_number(source),
            manufacturer=MANUFACTURER,
            is_complete=False,
            is_final=False,
            is_verified=False,
            series_description=_lo(SERIES_DESCRIPTION),
            manufacturer_model_name=_lo(identity.name),
            software_versions=[_lo(f"medblip-dicom {__version__}"), _lo(identity.version)],
            device_serial_number=_lo(identity.weights_sha256),
            requested_procedures=requested_procedures(source),
        )

    try:
        try:
            sr = make(evidence)
        except KeyError:
            # highdicom copies patient/study attributes by looking up the source's IOD, and it
            # knows no IOD for retired SOP classes (e.g. the old US Image Storage). Copy through a
            # Secondary Capture stand-in, then put the real class back into the evidence.
            stand_in = copy.deepcopy(evidence)
            stand_in.SOPClassUID = SECONDARY_CAPTURE
            sr = make(stand_in)
            _restore_evidence_class(sr, str(source.SOPInstanceUID), str(source.SOPClassUID))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ReportError(label, f"cannot build the Structured Report ({type(exc).__name__}: {exc})") from None
    return declare_character_set(sr)


def _lo(text: str) -> str:
    """Machine text (a model's name or version) as a LO value: at most 64 characters, no backslash."""
    return dicom_text(text, "LO", what="a model attribute", machine=True)


#: Image storage classes whose IOD has the Multi-frame module though their names do not say so.
_MULTIFRAME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy Image
    "1.2.840.10008.5.1.4.1.1.77.1.5.4",  # Ophthalmic Tomography Image
    "1.2.840.10008.5.1.4.1.1.14.1",  # Intravascular OCT Image (presentation)
    "1.2.840.10008.5.1.4.1.1.14.2",  # Intravascular OCT Image (processing)
}


def is_multiframe_class(sop_class_uid: str) -> bool:
    """True when instances of this SOP class may be referenced by frame number.

    A Referenced Frame Number is only allowed for multi-frame IODs; some files (for example
    Secondary Capture with NumberOfFrames > 1) carry several frames in a single-frame class.
    """
    from pydicom.uid import UID

    name = UID(sop_class_uid).name
    return sop_class_uid in _MULTIFRAME_CLASSES or any(
        word in name for word in ("Multi-frame", "Enhanced", "Legacy Converted")
    )


def _restore_evidence_class(sr: Dataset, sop_instance_uid: str, sop_class_uid: str) -> None:
    for study in sr.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            for ref in series.ReferencedSOPSequence:
                if ref.ReferencedSOPInstanceUID == sop_instance_uid:
                    ref.ReferencedSOPClassUID = sop_class_uid


def _instance_number(source: Dataset) -> int:
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return number if number > 0 else 1


def warm_up() -> None:
    """Build one throwaway report, so that the tables highdicom and pydicom load on first use
    (the standard's module attribute map, the SR codes) are loaded now.

    :func:`medblip_dicom.api.caption_dicoms` runs this in a prepare thread while the model
    captions its first batch, instead of in front of the first report.
    """
    source = Dataset()
    source.SOPClassUID = SECONDARY_CAPTURE
    source.SOPInstanceUID = source.StudyInstanceUID = source.SeriesInstanceUID = "2.25.1"
    build_report(source, "warm-up", ModelIdentity("warm-up", "0", "0" * 64, "warm-up"), label="warm-up")


def report_filename(sr: Dataset) -> str:
    """File name of an SR in an output folder: its SOPInstanceUID (digits and dots only) + .dcm."""
    uid = str(sr.SOPInstanceUID)
    if not uid or any(c not in "0123456789." for c in uid) or len(uid) > 64:
        raise ReportError(uid[:80], "refusing to use this SOPInstanceUID as a file name: not a valid UID")
    return f"{uid}.dcm"


def write_report(sr: Dataset, output_dir: str | os.PathLike[str]) -> Path:
    """Write `sr` into `output_dir` atomically (temporary file, fsync, rename); return its path.

    A reader never sees a partial file, and writing the same report again replaces it in place.
    """
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return atomic_write_bytes(Path(output_dir) / report_filename(sr), buffer.getvalue())
