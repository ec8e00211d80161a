"""A DICOM Encapsulated PDF of a report: what any viewer shows when it cannot render our SR.

Web viewers render few Structured Reports (OHIF v3 shows only TID 1500 measurement reports, not
our TID 2000 text), but they show an Encapsulated PDF. With ``[output] pdf = true`` the worker
writes one beside each AI report, and :func:`build_pdf_report` makes one for a signed report too.
Everything on the page is read from the SR itself (:class:`~medblip_dicom.report_view.CaptionReport`
and the SR's patient, study and verification attributes), so the PDF always says what the report
says:

- the status in plain words at the top: *AI-generated, UNVERIFIED, not for diagnosis*; or *signed
  by* whom, of which organization, *when*; or *amended* (a signed report whose predecessor is an
  earlier signed version: it lies in the same series, see :func:`report_status`);
- the patient and study (name, ID, birth date, sex, study date, accession number, description);
- the caption (the Finding), and the series note when the caption stands for a whole series;
- the source image windowed as the model saw it (:func:`medblip_dicom.pixels.dataset_to_image`),
  when the caller has it;
- the model's name, version and weights digest, and the UIDs of the source and the SR.

The page is laid out by reportlab with embedded TrueType fonts (:mod:`medblip_dicom.pdf_fonts`:
DejaVu, and Droid Sans Fallback for Chinese, Japanese and Korean when installed). A character no
font has is shown as U+FFFD and a warning says so; the DICOM attributes keep the text exactly.
Output is byte-for-byte repeatable (reportlab's invariant mode).

The DICOM object is an Encapsulated PDF Storage instance (PS3.3 A.45.1): the SR's patient and
study, a series of its own (Modality DOC), Burned In Annotation YES (the page names the patient),
the SR and the source image in SourceInstanceSequence, the SR's VerificationFlag, and UIDs
derived from the SR's (the same report always gives the same PDF UIDs; each signed version has
its own). Its text attributes follow the one text rule (:mod:`medblip_dicom.dicomtext`).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from medblip_dicom import __version__
from medblip_dicom.dicomtext import declare_character_set, dicom_text
from medblip_dicom.errors import MissingDependencyError, ReportError
from medblip_dicom.pdf_fonts import register_fonts
from medblip_dicom.report import MANUFACTURER
from medblip_dicom.report_view import CaptionReport, patient_and_study
from medblip_dicom.uids import stable_uid

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
#: Series Numbers of the PDF series (the SR series is 990, the Secondary Capture's 991).
AI_PDF_SERIES_NUMBER = 993
SIGNED_PDF_SERIES_NUMBER = 994
#: Series Descriptions (LO, at most 64 characters) of the AI reports' and the signed reports' PDFs.
AI_PDF_SERIES_DESCRIPTION = "AI caption PDF: machine-generated, UNVERIFIED, not for diagnosis"
SIGNED_PDF_SERIES_DESCRIPTION = "Radiology report PDF, signed by a radiologist"
#: The longest side of the picture on the page, in pixels (larger frames are scaled down).
MAX_PICTURE_PX = 1024


@dataclass(frozen=True)
class ReportStatus:
    """What a report is, in the words the PDF prints: ``kind`` is ``ai``, ``signed`` or ``amended``."""

    kind: str
    signer: str = ""
    organization: str = ""
    when: str = ""

    @property
    def headline(self) -> str:
        if self.kind == "ai":
            return "AI-generated · UNVERIFIED · not for diagnosis"
        verb = "Amended and signed" if self.kind == "amended" else "Signed"
        by = f" by {self.signer}" if self.signer else ""
        of = f" ({self.organization})" if self.organization else ""
        on = f" on {self.when}" if self.when else ""
        return f"{verb}{by}{of}{on}"

    @property
    def explanation(self) -> str:
        if self.kind == "ai":
            return ("This text was written by a machine-learning model from the image below. No radiologist has "
                    "reviewed it. Do not use it for diagnosis.")
        if self.kind == "amended":
            return ("A radiologist reviewed and signed this report; it replaces an earlier signed version. The text "
                    "below is the signed finding (VERIFIED, FINAL).")
        return "A radiologist reviewed and signed this report. The text below is the signed finding (VERIFIED, FINAL)."

    @property
    def document_title(self) -> str:
        return {"ai": "AI caption report: machine-generated, UNVERIFIED, not for diagnosis",
                "signed": "Radiology report, signed by a radiologist",
                "amended": "Radiology report, amended and signed by a radiologist"}[self.kind]


def report_status(sr: Dataset) -> ReportStatus:
    """The status of one of our SRs: AI (UNVERIFIED), signed (VERIFIED) or amended.

    A VERIFIED report is *amended* when one of its predecessors (PredecessorDocumentsSequence) lies
    in its own series: every signed version of one AI report shares one series, and the first
    signed version's predecessor is the AI report, in the AI series. The signer, organization and
    time come from the first item of VerifyingObserverSequence.
    """
    if str(sr.get("VerificationFlag", "")) != "VERIFIED":
        return ReportStatus("ai")
    own_series = str(sr.get("SeriesInstanceUID", ""))
    predecessor_series = {str(series.get("SeriesInstanceUID", ""))
                          for study in sr.get("PredecessorDocumentsSequence", [])
                          for series in study.get("ReferencedSeriesSequence", [])}
    observers = sr.get("VerifyingObserverSequence", [])
    observer = observers[0] if observers else Dataset()
    return ReportStatus("amended" if own_series in predecessor_series else "signed",
                        signer=person_name(observer.get("VerifyingObserverName")),
                        organization=str(observer.get("VerifyingOrganization", "") or ""),
                        when=readable_datetime(str(observer.get("VerificationDateTime", "") or "")))


def pdf_uids(sr: Dataset) -> tuple[str, str]:
    """``(series_uid, sop_instance_uid)`` of the PDF of `sr`: derived from the SR's series and instance
    UIDs, like the SR's own are derived from the source's (same report: same PDF UIDs)."""
    series = stable_uid("medblip-dicom/pdf-series", str(sr.SeriesInstanceUID))
    instance = stable_uid("medblip-dicom/pdf", str(sr.SOPInstanceUID))
    return series, instance


def build_pdf_report(sr: Dataset, image: Image.Image | None, *,
                     font_dirs: Sequence[Path] | None = None) -> Dataset:
    """The Encapsulated PDF of `sr` (one of our SRs, AI or signed) with `image`, the windowed source
    frame (None when the source is not at hand: the page says so).

    Raises :class:`~medblip_dicom.errors.ReportError` when `sr` is not one of our caption reports,
    and :class:`~medblip_dicom.errors.MissingDependencyError` when reportlab or the fonts are missing.
    """
    import highdicom as hd

    report = CaptionReport.from_dataset(sr)
    status = report_status(sr)
    pdf = render_pdf(sr, image, font_dirs=font_dirs)
    series_uid, sop_uid = pdf_uids(sr)


    try:
        doc = hd.SOPClass(
            **patient_and_study(sr),
            series_instance_uid=series_uid,
            series_number=AI_PDF_SERIES_NUMBER if status.kind == "ai" else SIGNED_PDF_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            sop_class_uid=ENCAPSULATED_PDF,
            instance_number=int(sr.get("InstanceNumber") or 1),
            modality="DOC",
            manufacturer=MANUFACTURER,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            series_description=AI_PDF_SERIES_DESCRIPTION if status.kind == "ai" else SIGNED_PDF_SERIES_DESCRIPTION,
            manufacturer_model_name=_lo(report.model_name),
            software_versions=[_lo(f"medblip-dicom {__version__}"), _lo(report.model_version)],
            device_serial_number=_lo(report.weights_sha256),
            content_date=sr.get("ContentDate") or None,
            content_time=sr.get("ContentTime") or None,
        )
    except (TypeError, ValueError) as exc:
        raise ReportError(report.sop_instance_uid,
                          f"cannot build the PDF report ({type(exc).__name__}: {exc})") from None
    for keyword in ("StudyDescription", "IssuerOfPatientID", "PatientAge"):
        if keyword in sr and sr[keyword].value not in (None, ""):
            doc[keyword] = sr[keyword]
    doc.ConversionType = "WSD"  # workstation: made by software
    doc.AcquisitionDateTime = ""  # type 2: nothing was acquired
    doc.BurnedInAnnotation = "YES"  # the page names the patient
    doc.DocumentTitle = dicom_text(status.document_title, "ST", what="the document title", machine=True)
    doc.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    doc.VerificationFlag = "VERIFIED" if status.kind != "ai" else "UNVERIFIED"
    doc.SourceInstanceSequence = [_reference(str(sr.SOPClassUID), report.sop_instance_uid)]
    if report.source_sop_class_uid and report.source_sop_instance_uid:
        doc.SourceInstanceSequence.append(_reference(report.source_sop_class_uid, report.source_sop_instance_uid))
    doc.MIMETypeOfEncapsulatedDocument = "application/pdf"
    doc.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB values have an even length
    doc.EncapsulatedDocumentLength = len(pdf)
    return declare_character_set(doc)


def render_pdf(sr: Dataset, image: Image.Image | None, *, font_dirs: Sequence[Path] | None = None) -> bytes:
    """The PDF page of `sr` (see the module docstring) as bytes; the same inputs give the same bytes."""
    try:
        from reportlab.lib import colors
        from reportlab.lib.pagesizes import A4
        from reportlab.lib.styles import ParagraphStyle
        from reportlab.lib.units import mm
        from reportlab.platypus import Image as PdfImage
        from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
    except ImportError:
        raise MissingDependencyError("the PDF report needs reportlab: pip install 'medblip-dicom[pdf]'") from None

    report = CaptionReport.from_dataset(sr)
    status = report_status(sr)
    fonts = register_fonts(tuple(font_dirs) if font_dirs is not None else None)
    missing: set[str] = set()

    def text(value: str) -> str:
        return fonts.markup(value, missing)

    body = ParagraphStyle("body", fontName=fonts.regular, fontSize=10, leading=13)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10, textColor=colors.HexColor("#444444"))
    mono = ParagraphStyle("mono", parent=small, fontName=fonts.mono)
    title = ParagraphStyle("title", parent=body, fontName=fonts.bold, fontSize=15, leading=19)
    heading = ParagraphStyle("heading", parent=body, fontName=fonts.bold, fontSize=11, leading=14, spaceBefore=6)
    finding = ParagraphStyle("finding", parent=body, fontSize=12, leading=16, wordWrap="CJK")
    banner_colour = colors.HexColor("#b45309") if status.kind == "ai" else colors.HexColor("#166534")
    banner_text = ParagraphStyle("banner", parent=body, fontName=fonts.bold, fontSize=12, leading=15,
                                 textColor=colors.white)
    banner_small = ParagraphStyle("banner_small", parent=body, textColor=colors.white)

    width = A4[0] - 36 * mm
    story: list[object] = [Paragraph(text("Radiology image report"), title), Spacer(1, 3 * mm)]
    banner = Table([[Paragraph(text(status.headline), banner_text)],
                    [Paragraph(text(status.explanation), banner_small)]],
                   colWidths=[width])
    # Every table names its font: a table's default, Helvetica, would be referenced without being embedded.
    grid = TableStyle([("FONT", (0, 0), (-1, -1), fonts.regular), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                       ("LEFTPADDING", (0, 0), (-1, -1), 0), ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
                       ("TOPPADDING", (0, 0), (-1, -1), 1)])
    banner.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), fonts.regular),
                                ("BACKGROUND", (0, 0), (-1, -1), banner_colour),
                                ("LEFTPADDING", (0, 0), (-1, -1), 8), ("RIGHTPADDING", (0, 0), (-1, -1), 8)]))
    story += [banner, Spacer(1, 4 * mm)]

    rows = [(label, value) for label, value in (
        ("Patient", person_name(sr.get("PatientName"))), ("Patient ID", str(sr.get("PatientID", "") or "")),
        ("Birth date", readable_date(str(sr.get("PatientBirthDate", "") or ""))),
        ("Sex", str(sr.get("PatientSex", "") or "")),
        ("Study date", readable_date(str(sr.get("StudyDate", "") or ""))),
        ("Accession number", str(sr.get("AccessionNumber", "") or "")),
        ("Study", str(sr.get("StudyDescription", "") or ""))) if value]
    if rows:
        facts = Table([[Paragraph(text(label), small), Paragraph(text(value), body)] for label, value in rows],
                      colWidths=[35 * mm, width - 35 * mm])
        facts.setStyle(grid)
        story.append(facts)

    story += [Paragraph(text("Finding"), heading), Paragraph(text(report.caption), finding)]
    if report.note:
        story.append(Paragraph(text(report.note), small))

    story.append(Paragraph(text("Source image, windowed as the model saw it"), heading))
    if image is not None:
        picture = _page_picture(image)
        scale = min(width / picture.width, 110 * mm / picture.height, 1.0 if picture.width >= 400 else 2.0)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1)  # only read back by reportlab, which compresses
        buffer.seek(0)
        story.append(PdfImage(buffer, width=picture.width * scale, height=picture.height * scale,
                              hAlign="LEFT"))
    else:
        story.append(Paragraph(text("The source image was not available when this document was made."), small))
    frames = f", frame {report.source_frames[0]}" if report.source_frames else ""
    story.append(Paragraph(text(f"Source instance {report.source_sop_instance_uid}{frames}"), mono))

    story.append(Paragraph(text("Model"), heading))
    model = Table([[Paragraph(text("Name"), small), Paragraph(text(report.model_name), body)],
                   [Paragraph(text("Version"), small), Paragraph(text(report.model_version), body)],
                   [Paragraph(text("Weights SHA-256"), small), Paragraph(text(report.weights_sha256), mono)]],
                  colWidths=[35 * mm, width - 35 * mm])
    model.setStyle(grid)
    story.append(model)
    story += [Spacer(1, 4 * mm),
              Paragraph(text(f"Structured Report {report.sop_instance_uid}; made by medblip-dicom {__version__}."),
                        mono)]

    def footer(canvas: object, doc: object) -> None:
        canvas.saveState()  # type: ignore[attr-defined]
        canvas.setFont(fonts.regular, 7)  # type: ignore[attr-defined]
        canvas.setFillColor(banner_colour)  # type: ignore[attr-defined]
        canvas.drawString(18 * mm, 10 * mm, status.headline)  # type: ignore[attr-defined]
        canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"page {doc.page}")  # type: ignore[attr-defined]
        canvas.restoreState()  # type: ignore[attr-defined]

    out = io.BytesIO()
    document = SimpleDocTemplate(out, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
                                 bottomMargin=18 * mm, title=status.document_title, author=MANUFACTURER,
                                 subject="Radiology image caption report", creator=f"medblip-dicom {__version__}",
                                 invariant=1, initialFontName=fonts.regular)
    # (the canvas's initial font would otherwise be Helvetica, referenced without being embedded)
    _build(document, story, footer)
    if missing:
        logger.warning("PDF report for SR %s: %d characters have no glyph in the PDF fonts and are shown as U+FFFD "
                       "(install fonts-droid-fallback for Chinese, Japanese and Korean); the DICOM attributes keep "
                       "them",
                       report.sop_instance_uid, len(missing))
    return out.getvalue()


# -- small helpers -----------------------------------------------------------------------------------


def person_name(value: object) -> str:
    """A DICOM person name as people read it: ``Family, Given Middle`` (other groups after ``=``)."""
    if value in (None, ""):
        return ""
    groups = []
    for group in str(value).split("="):
        family, given, middle, prefix, suffix = (group.split("^") + [""] * 5)[:5]
        first = " ".join(p for p in (prefix, given, middle) if p)
        name = ", ".join(p for p in (family, first) if p)
        groups.append(f"{name} {suffix}".strip())
    return " = ".join(g for g in groups if g) or str(PersonName(str(value)))


def readable_date(value: str) -> str:
    """``YYYYMMDD`` as ``YYYY-MM-DD`` (anything else unchanged)."""
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def readable_datetime(value: str) -> str:
    """A DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``, any precision) as ``YYYY-MM-DD HH:MM (+ZZXX)``."""
    value = value.strip()
    if not value:
        return ""
    zone = ""
    for sign in "+-":
        if len(value) > 8 and sign in value[8:]:
            value, zone = value[: value.rindex(sign)], value[value.rindex(sign):]
    digits = value.split(".")[0]
    try:
        stamp = dt.datetime.strptime(digits[:12].ljust(12, "0"), "%Y%m%d%H%M")
    except ValueError:
        return value + zone
    text = stamp.strftime("%Y-%m-%d %H:%M") if len(digits) > 8 else stamp.strftime("%Y-%m-%d")
    return f"{text} ({zone})" if zone else text


#: reportlab's settings are process-wide: one document is built at a time while they are changed.
_BUILD_LOCK = threading.Lock()


def _build(document: object, story: list[object], footer: object) -> None:
    """Build `document` with binary streams: reportlab's default ASCII85 encoding (a text-safe form
    that a PDF inside a DICOM OB value does not need) is done in pure Python without its optional C
    accelerator, and takes seconds for a full-size radiograph."""
    from reportlab import rl_config

    with _BUILD_LOCK:
        saved = rl_config.useA85
        rl_config.useA85 = 0
        try:
            document.build(story, onFirstPage=footer, onLaterPages=footer)  # type: ignore[attr-defined]
        finally:
            rl_config.useA85 = saved


def _page_picture(image: Image.Image) -> Image.Image:
    """The picture as embedded: at most MAX_PICTURE_PX on its longer side; grey (one channel) when
    all three channels are equal, which makes the PDF a third of the size."""
    picture = image.convert("RGB")
    if max(picture.size) > MAX_PICTURE_PX:
        factor = MAX_PICTURE_PX / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * factor)), max(1, round(picture.height * factor))),
                                 Image.Resampling.LANCZOS)
    r, g, b = picture.split()
    if r.tobytes() == g.tobytes() == b.tobytes():
        return r
    return picture


def _reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _lo(text: str) -> str:
    return dicom_text(text, "LO", what="a PDF report attribute", machine=True)
