"""The reviewer's documents: the signed (VERIFIED) Comprehensive SR and the IOCM rejection note.

A signed report follows the SR contract (DESIGN.md, "The SR contract"), built from the same pieces
as the AI report (:func:`medblip_dicom.report.content_tree` and
:func:`~medblip_dicom.report.evidence_view`):

- same Patient and Study as the source, evidence = the source; VerificationFlag VERIFIED with
  VerifyingObserverSequence (the reviewer's name, the organization, the time), PreliminaryFlag
  FINAL, CompletionFlag COMPLETE; the source's header is the one the AI report recorded
  (:func:`source_header`), so signing and amending need no source file;
- PredecessorDocumentsSequence -> the AI report, or the previous signed report for an amendment;
- a person observer (the reviewer) beside the device observer (the model that wrote the caption);
- the final text as the Finding, and the review outcome beside it: whether the AI text was kept
  unchanged or edited (:data:`REVIEW_OUTCOME`, a TEXT item of this project's private scheme);
- SOPInstanceUID derived from the AI report, its predecessor, the reviewer and the text: signing
  the same text twice gives the same UID (a double click signs once).

The rejection note is a Key Object Selection document titled (113001, DCM) "Rejected for Quality
Reasons" (IHE IOCM) that references the AI report, so archives that honour IOCM hide it.

Every text a person gave (the signed text, the rejection reason, the reviewer's person name, the
organization) passes the one DICOM text rule (:func:`medblip_dicom.dicomtext.dicom_text`): kept as
Unicode (NFC), refused with a :class:`~medblip_dicom.dicomtext.TextError` naming the character and
its position when it holds one that DICOM text cannot (a control character, a line separator, a
backslash in a name); both documents declare ``ISO_IR 192`` when any value is not ASCII. So the
report the PACS gets says what the reviewer saw and signed, character for character. A signed
text and a rejection reason are also required and bounded (:func:`signed_text`,
:func:`rejection_reason`): the one place those rules are written, for the pages, the API and the
store alike.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import os
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medblip_dicom import __version__
from medblip_dicom.dicomtext import TextError, declare_character_set, dicom_text
from medblip_dicom.errors import ReportError
from medblip_dicom.identity import ModelIdentity
from medblip_dicom.report import MANUFACTURER, content_tree, evidence_view, is_multiframe_class
from medblip_dicom.report_view import CaptionReport
from medblip_dicom.uids import is_dicom_uid, stable_uid

#: Series Description of signed reports and of rejection notes (LO, at most 64 characters).
SIGNED_SERIES_DESCRIPTION = "AI caption reviewed and signed by a radiologist"
REJECTION_SERIES_DESCRIPTION = "AI caption rejected by a radiologist (IOCM)"
SIGNED_SERIES_NUMBER = 991
REJECTION_SERIES_NUMBER = 992
#: The review outcome beside the finding: "AI text kept unchanged" or "AI text edited".
REVIEW_OUTCOME = CodedConcept("REVIEW-OUTCOME", "99MEDBLIP", "Review outcome")
KEPT, EDITED = "AI text kept unchanged", "AI text edited"
#: The longest text a reviewer signs and the longest rejection reason, in characters once
#: whitespace runs are collapsed (:func:`signed_text`, :func:`rejection_reason`).
SIGNED_TEXT_MAX_CHARS = 20000
REASON_MAX_CHARS = 2000


@dataclass(frozen=True)
class Reviewer:
    """Who signs: login name (the audit's and the UID's key), DICOM person name, organization."""

    username: str
    person_name: str
    organization: str


def normalise_text(text: str, what: str = "the text") -> str:
    """A person's text as it is signed (or recorded as a reason): the DICOM text rule for a UT
    value (Unicode kept, NFC; a character DICOM text cannot hold raises
    :class:`~medblip_dicom.dicomtext.TextError` naming it and its position in `text`), then
    whitespace runs collapsed: what the SR, the database and the comparisons hold."""
    return " ".join(dicom_text(text, "UT", what=what).split())


def _required(text: str, what: str, max_chars: int, empty: str) -> str:
    """:func:`normalise_text`, refused with a TextError when nothing is left (`empty` says what to do)
    or more than `max_chars` characters are."""
    text = normalise_text(text, what)
    if not text:
        raise TextError(f"{what} is empty; {empty}", what=what)
    if len(text) > max_chars:
        raise TextError(f"{what} has {len(text)} characters; at most {max_chars} are kept: shorten it", what=what)
    return text


def signed_text(text: str) -> str:
    """The text a reviewer signs, as it is signed (:func:`normalise_text`; errors say "the signed
    text"): an empty text, or one longer than :data:`SIGNED_TEXT_MAX_CHARS`, is refused with a
    :class:`~medblip_dicom.dicomtext.TextError` (a signed report without a finding says nothing)."""
    return _required(text, "the signed text", SIGNED_TEXT_MAX_CHARS, "write a finding or reject the report")


def rejection_reason(reason: str) -> str:
    """A rejection reason, as it is recorded (:func:`normalise_text`; errors say "the rejection
    reason"): required, on the pages as in the API, and at most :data:`REASON_MAX_CHARS` characters.
    A rejection without a reason helps nobody downstream: the reason is what the audit trail, the
    rejection note sent to the PACS and the training export (``feedback.rejected.jsonl``) hold."""
    return _required(reason, "the rejection reason", REASON_MAX_CHARS,
                     "say what is wrong with the AI report (the rejection note and the training export keep it)")


def caption_text(caption: str) -> str:
    """An AI caption as a signed text holding it unchanged would read (never raises: a caption is
    machine text, cleaned as the AI report was), to tell "kept unchanged" from "edited"."""
    return dicom_text(caption, "UT", what="the AI caption", machine=True)


def _person(reviewer: Reviewer) -> tuple[str, str]:
    """The reviewer's (person name, organization) as DICOM PN and LO values; TextError names the
    one that holds a character DICOM refuses (an account made before names were checked)."""
    return (dicom_text(reviewer.person_name, "PN", what=f"the person name of reviewer {reviewer.username}"),
            dicom_text(reviewer.organization, "LO", what="the organization ([review] organization)"))


def _lo(text: str) -> str:
    return dicom_text(text, "LO", what="a model attribute", machine=True)


def signed_uid(ai_uid: str, predecessor_uid: str, username: str, text: str) -> str:
    """The SOPInstanceUID of the signed report (deterministic; see the module docstring)."""
    return stable_uid("medblip-dicom/signed-sr", ai_uid, predecessor_uid, username, normalise_text(text))


def signed_series_uid(ai_series_uid: str) -> str:
    """The SeriesInstanceUID of every signed version of the AI reports of one AI series."""
    return stable_uid("medblip-dicom/signed-series", ai_series_uid)


def source_header(report: Dataset) -> Dataset:
    """The source instance's header as `report` (one of our SRs) records it: what a signed report needs
    from its source, so signing never needs the source file (``[review] keep_sources = false`` removes it
    after the first decision).

    The SR holds the patient and study attributes it copied from the source (:func:`evidence_view`),
    and its evidence and Source Image item name the source's SOP class, instance and series; the
    header is :func:`evidence_view` of the SR with those three UIDs put back. Raises ReportError when
    the SR does not reference its source in CurrentRequestedProcedureEvidenceSequence.
    """
    ai = CaptionReport.from_dataset(report)
    series = [str(s.SeriesInstanceUID) for study in report.get("CurrentRequestedProcedureEvidenceSequence", [])
              for s in study.get("ReferencedSeriesSequence", []) for ref in s.get("ReferencedSOPSequence", [])
              if str(ref.get("ReferencedSOPInstanceUID", "")) == ai.source_sop_instance_uid]
    if not series or not ai.source_sop_class_uid:
        raise ReportError(ai.sop_instance_uid, "does not reference its source image in "
                          "CurrentRequestedProcedureEvidenceSequence; it cannot be signed")
    header = evidence_view(report)
    header.SOPClassUID = ai.source_sop_class_uid
    header.SOPInstanceUID = ai.source_sop_instance_uid
    header.SeriesInstanceUID = series[0]
    return header


def build_signed_report(ai_sr: Dataset, predecessor: Dataset, source: Dataset, reviewer: Reviewer, text: str,
                        *, when: dt.datetime | None = None) -> hd.sr.ComprehensiveSR:
    """The VERIFIED, FINAL, COMPLETE report of `reviewer` with `text` for the source of `ai_sr`.

    `predecessor` is `ai_sr` itself, or the previous signed report (an amendment; its four UIDs are
    enough); `source` is the source instance's header (:func:`source_header` of `ai_sr` will do).
    Raises TextError for a text :func:`signed_text` refuses (empty, too long, a character DICOM
    text cannot hold), ReportError for content that highdicom refuses.
    """
    ai = CaptionReport.from_dataset(ai_sr)
    label = ai.sop_instance_uid
    text = signed_text(text)
    if str(source.SOPInstanceUID) != ai.source_sop_instance_uid:
        raise ReportError(label, f"the source {source.SOPInstanceUID} is not the AI report's source")
    identity = ModelIdentity(ai.model_name, ai.model_version, ai.weights_sha256, "review",
                             architecture=ai.architecture, prompt=ai.prompt)
    person_name, organization = _person(reviewer)
    person = hd.sr.PersonObserverIdentifyingAttributes(name=person_name, organization_name=organization or None)
    outcome = hd.sr.TextContentItem(name=REVIEW_OUTCOME, value=KEPT if text == caption_text(ai.caption) else EDITED,
                                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    frame = ai.source_frames[0] if ai.source_frames and is_multiframe_class(str(source.SOPClassUID)) else None
    when = when or dt.datetime.now().astimezone()
    try:
        content = content_tree(text, source, identity, frame, ai.note or None, person=person, extra_items=(outcome,))
        # The device observer of the AI report is kept as it was: the model that wrote the caption.
        _set_device_uid(content, ai.device_uid)
        sr = hd.sr.ComprehensiveSR(
            evidence=[evidence_view(source)],
            content=content,
            series_instance_uid=signed_series_uid(ai.series_instance_uid),
            series_number=SIGNED_SERIES_NUMBER,
            sop_instance_uid=signed_uid(ai.sop_instance_uid, str(predecessor.SOPInstanceUID), reviewer.username, text),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=True,
            is_verified=True,
            verifying_observer_name=person_name,
            verifying_organization=organization or "unknown",
            previous_versions=[predecessor],
            # The orders the AI report answered are the signed report's too (HL7 ORC/OBR, FHIR basedOn).
            requested_procedures=[copy.deepcopy(r) for r in ai_sr.get("ReferencedRequestSequence") or []] or None,
            series_description=SIGNED_SERIES_DESCRIPTION,
            manufacturer_model_name=_lo(ai.model_name),
            software_versions=[_lo(f"medblip-dicom {__version__}"), _lo(ai.model_version)],
            device_serial_number=_lo(ai.weights_sha256),
        )
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ReportError(label, f"cannot build the signed report ({type(exc).__name__}: {exc})") from None
    stamp = when.strftime("%Y%m%d%H%M%S.%f%z")
    sr.VerifyingObserverSequence[0].VerificationDateTime = stamp
    sr.ContentDate, sr.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    return declare_character_set(sr)


def _set_device_uid(content: Dataset, device_uid: str) -> None:
    if not device_uid:
        return
    for item in content.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue if item.get("ConceptNameCodeSequence") else None
        if code == "121012" and item.get("ValueType") == "UIDREF":  # Device Observer UID
            item.UID = device_uid


def build_rejection_note(ai_sr: Dataset, reviewer: Reviewer, reason: str) -> hd.ko.KeyObjectSelectionDocument:
    """A Key Object Selection "Rejected for Quality Reasons" (113001, DCM) referencing `ai_sr`, with
    `reason` as its Key Object Description (a TEXT item: UT, kept whole; :func:`rejection_reason`
    refuses an empty one)."""
    ai = CaptionReport.from_dataset(ai_sr)
    person_name, organization = _person(reviewer)
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=person_name, organization_name=organization or None))
    reason = rejection_reason(reason)
    try:
        content = hd.ko.KeyObjectSelection(document_title=codes.DCM.RejectedForQualityReasons,
                                           referenced_objects=[ai_sr], observer_person_context=person,
                                           description=reason)
        note = hd.ko.KeyObjectSelectionDocument(
            evidence=[ai_sr],
            content=content,
            series_instance_uid=stable_uid("medblip-dicom/rejection-series", ai.series_instance_uid),
            series_number=REJECTION_SERIES_NUMBER,
            sop_instance_uid=stable_uid("medblip-dicom/rejection", ai.sop_instance_uid),
            instance_number=1,
            manufacturer=MANUFACTURER,
            series_description=REJECTION_SERIES_DESCRIPTION,
        )
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ReportError(ai.sop_instance_uid, f"cannot build the rejection note ({type(exc).__name__}: {exc})") from None
    return declare_character_set(note)


def encode(ds: Dataset) -> bytes:
    """The Part 10 bytes of a document (what is written atomically and delivered)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def document_name(ds: Dataset) -> str:
    """``<SOPInstanceUID>.dcm`` (digits and dots only: safe as a file name)."""
    uid = str(ds.SOPInstanceUID)
    if not is_dicom_uid(uid):
        raise ReportError(uid[:80], "not a valid UID for a file name")
    return f"{uid}{os.extsep}dcm"
