"""The Encapsulated PDF report: a valid DICOM document whose page says what the SR says.

The page is read back with pypdf (text, fonts, the embedded picture); the DICOM object is checked
with dciodvfy. Signed and amended reports are built by the review station's own signing code.
"""

from __future__ import annotations

import datetime as dt
import io
import logging

import numpy as np
import pydicom
import pytest
from PIL import Image

from medblip_dicom.errors import MissingDependencyError, ReportError
from medblip_dicom.identity import ModelIdentity
from medblip_dicom.pdf_fonts import FALLBACK_FONTS, register_fonts
from medblip_dicom.pdf_report import (
    AI_PDF_SERIES_NUMBER, ENCAPSULATED_PDF, SIGNED_PDF_SERIES_NUMBER, build_pdf_report, pdf_uids, readable_datetime,
    render_pdf, report_status,
)
from medblip_dicom.pixels import dataset_to_image
from medblip_dicom.report import build_report, write_report
from tests.support.dicom import dciodvfy_errors
from tests.support.env import in_ci

pypdf = pytest.importorskip("pypdf", reason="pypdf (the dev extra) reads the PDF back")
pytest.importorskip("reportlab", reason="reportlab (the pdf extra) writes the PDF")

IDENTITY = ModelIdentity("tiny-blip-radiology", "2.1.0", "0123456789abcdef" * 4, "test")
CAPTION = "Axial CT of the chest: a 3 mm nodule, density ≥ 40 HU, µ-level detail at 37 °C."


@pytest.fixture(scope="module")
def ct(td):
    return pydicom.dcmread(td("CT_small.dcm"))


@pytest.fixture(scope="module")
def ai_sr(ct):
    return build_report(ct, CAPTION, IDENTITY)


@pytest.fixture(scope="module")
def picture(ct):
    return dataset_to_image(ct)


@pytest.fixture(scope="module")
def ai_pdf(ai_sr, picture):
    return build_pdf_report(ai_sr, picture)


def page_text(document) -> str:
    reader = pypdf.PdfReader(io.BytesIO(document.EncapsulatedDocument))
    return "\n".join(page.extract_text() for page in reader.pages)


def one_line(text: str) -> str:
    return " ".join(text.split())


def signed(ai_sr, predecessor, text: str, *, name: str = "Dupont^Élodie", organization: str = "CHU Liège"):
    from medblip_dicom.integrations.review.signing import Reviewer, build_signed_report, source_header

    reviewer = Reviewer("edupont", name, organization)
    when = dt.datetime(2026, 3, 14, 9, 26, 53, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    return build_signed_report(ai_sr, predecessor, source_header(ai_sr), reviewer, text, when=when)


class TestDocument:
    def test_a_valid_encapsulated_pdf_in_the_sources_study_in_a_series_of_its_own(self, ct, ai_sr, ai_pdf,
                                                                                   tmp_path, tool):
        tool("dciodvfy")
        path = write_report(ai_pdf, tmp_path)
        assert not dciodvfy_errors(path)
        back = pydicom.dcmread(path)
        assert back.SOPClassUID == ENCAPSULATED_PDF and back.Modality == "DOC"
        assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
        assert back.StudyInstanceUID == ct.StudyInstanceUID
        assert (back.PatientID, back.PatientName) == (ct.PatientID, ct.PatientName)
        assert back.SeriesInstanceUID not in (ct.SeriesInstanceUID, ai_sr.SeriesInstanceUID)
        assert back.SeriesNumber == AI_PDF_SERIES_NUMBER
        assert bytes(back.EncapsulatedDocument)[: back.EncapsulatedDocumentLength].startswith(b"%PDF-")
        assert bytes(back.EncapsulatedDocument)[: back.EncapsulatedDocumentLength].rstrip().endswith(b"%%EOF")

    def test_says_unverified_and_references_the_report_and_the_source(self, ct, ai_sr, ai_pdf):
        assert ai_pdf.VerificationFlag == "UNVERIFIED"
        assert "UNVERIFIED" in ai_pdf.DocumentTitle and "not for diagnosis" in ai_pdf.SeriesDescription
        assert ai_pdf.BurnedInAnnotation == "YES"  # the page names the patient
        refs = [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in ai_pdf.SourceInstanceSequence]
        assert refs == [(ai_sr.SOPClassUID, ai_sr.SOPInstanceUID), (ct.SOPClassUID, ct.SOPInstanceUID)]
        assert ai_pdf.DeviceSerialNumber == IDENTITY.weights_sha256

    def test_uids_are_derived_from_the_report_and_the_bytes_repeat(self, ct, ai_sr, ai_pdf, picture):
        again = build_pdf_report(build_report(ct, CAPTION, IDENTITY), picture)
        assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (ai_pdf.SeriesInstanceUID, ai_pdf.SOPInstanceUID)
        assert again.EncapsulatedDocument == ai_pdf.EncapsulatedDocument
        other_model = build_report(ct, CAPTION, ModelIdentity("other", "1", "f" * 64, "test"))
        assert pdf_uids(other_model)[1] != ai_pdf.SOPInstanceUID
        assert pdf_uids(ai_sr) == (ai_pdf.SeriesInstanceUID, ai_pdf.SOPInstanceUID)

    def test_unicode_attributes_declare_utf8(self, ct, picture):
        source = pydicom.dcmread(io.BytesIO(_saved(ct)))
        source.PatientName = "Müller^Zoë"
        document = build_pdf_report(build_report(source, CAPTION, IDENTITY), picture)
        assert document.SpecificCharacterSet == "ISO_IR 192"
        assert str(document.PatientName) == "Müller^Zoë"
        assert "Müller, Zoë" in page_text(document)

    def test_a_document_that_is_not_a_caption_report_is_refused(self, ct, picture):
        with pytest.raises(ReportError, match="not a Structured Report"):
            build_pdf_report(ct, picture)


class TestPage:
    def test_caption_status_patient_and_model_in_plain_words(self, ct, ai_pdf):
        text = one_line(page_text(ai_pdf))
        assert CAPTION in text  # Unicode (≥, µ, °) extracted exactly as written
        assert "AI-generated · UNVERIFIED · not for diagnosis" in text
        assert "No radiologist has reviewed it" in text
        assert "CompressedSamples, CT1" in text and str(ct.PatientID) in text
        for value in (IDENTITY.name, IDENTITY.version, IDENTITY.weights_sha256, str(ct.SOPInstanceUID)):
            assert value in text

    def test_every_font_is_embedded(self, ai_pdf):
        reader = pypdf.PdfReader(io.BytesIO(ai_pdf.EncapsulatedDocument))
        fonts = [font.get_object() for page in reader.pages
                 for font in page["/Resources"]["/Font"].values()]
        assert fonts
        for font in fonts:
            assert font["/Subtype"] == "/TrueType", font["/BaseFont"]  # no unembedded base-14 font
            assert "/FontFile2" in font["/FontDescriptor"], f"{font['/BaseFont']} is not embedded"
        assert any("DejaVuSans" in str(font["/BaseFont"]) for font in fonts)

    def test_the_picture_is_the_windowed_image_the_model_saw(self, ai_pdf, picture):
        reader = pypdf.PdfReader(io.BytesIO(ai_pdf.EncapsulatedDocument))
        images = [image.image for page in reader.pages for image in page.images]
        assert len(images) == 1
        grey = np.asarray(picture)[:, :, 0]  # a CT: the three channels are equal, embedded as one
        assert np.array_equal(np.asarray(images[0].convert("L")), grey)

    def test_a_large_colour_picture_is_scaled_down_and_kept_in_colour(self, ai_sr):
        wide = Image.new("RGB", (2048, 1024), (200, 30, 30))
        reader = pypdf.PdfReader(io.BytesIO(render_pdf(ai_sr, wide)))
        image = reader.pages[0].images[0].image
        assert image.size == (1024, 512) and image.convert("RGB").getpixel((10, 10)) == (200, 30, 30)

    def test_without_the_source_image_the_page_says_so(self, ai_sr):
        text = one_line(pypdf.PdfReader(io.BytesIO(render_pdf(ai_sr, None))).pages[0].extract_text())
        assert "source image was not available" in text and CAPTION in text

    def test_markup_in_a_caption_is_text(self, ct, picture):
        caption = 'Left <b>lung</b> & <font name="Courier">right</font> &amp; 5 < 7'
        text = one_line(page_text(build_pdf_report(build_report(ct, caption, IDENTITY), picture)))
        assert caption in text

    def test_chinese_japanese_korean_through_the_fallback_font(self, ct, picture):
        if not any(path.is_file() for path in FALLBACK_FONTS):
            message = "no fallback font for CJK (Debian package fonts-droid-fallback)"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)
        caption = "右肺上叶结节 肺結節 폐결절"
        document = build_pdf_report(build_report(ct, caption, IDENTITY), picture)
        assert caption in one_line(page_text(document))

    def test_a_character_no_font_has_is_marked_and_the_dicom_text_keeps_it(self, ct, picture, caplog):
        fonts = register_fonts()
        glyphless = next(chr(c) for c in range(0x13000, 0x13430) if fonts.font_for(chr(c)) is None)
        caption = f"Hieroglyph {glyphless} in the caption"
        sr = build_report(ct, caption, IDENTITY)
        with caplog.at_level(logging.WARNING, logger="medblip_dicom.pdf_report"):
            text = page_text(build_pdf_report(sr, picture))
        assert "Hieroglyph \ufffd in the caption" in one_line(text)
        assert "1 characters have no glyph" in caplog.text and glyphless not in caplog.text
        assert caption in str(sr.ContentSequence[-1].ContentSequence[0].TextValue)

    def test_missing_fonts_name_the_package_to_install(self, ai_sr, tmp_path):
        with pytest.raises(MissingDependencyError, match="fonts-dejavu-core") as refused:
            render_pdf(ai_sr, None, font_dirs=[tmp_path])
        assert "DejaVuSansMono.ttf" in str(refused.value)

    def test_fonts_are_found_across_folders(self, ai_sr, tmp_path):
        """Fedora keeps DejaVu Sans and DejaVu Sans Mono in folders of their own."""
        import shutil

        from medblip_dicom.pdf_fonts import FONT_FILES, _font_files

        installed = _font_files(None)
        sans, mono = tmp_path / "sans", tmp_path / "mono"
        for folder, roles in ((sans, ("regular", "bold")), (mono, ("mono",))):
            folder.mkdir()
            for role in roles:
                shutil.copy(installed[role], folder / FONT_FILES[role])
        text = pypdf.PdfReader(io.BytesIO(render_pdf(ai_sr, None, font_dirs=[sans, mono]))).pages[0].extract_text()
        assert IDENTITY.weights_sha256 in text


class TestStatus:
    def test_an_ai_report(self, ai_sr):
        assert report_status(ai_sr).kind == "ai"

    def test_a_signed_report_says_by_whom_and_when(self, ai_sr, picture, tmp_path, tool):
        tool("dciodvfy")
        first = signed(ai_sr, ai_sr, "Chest CT: 3 mm nodule in the right upper lobe.")
        status = report_status(first)
        assert (status.kind, status.signer, status.organization) == ("signed", "Dupont, Élodie", "CHU Liège")
        document = build_pdf_report(first, picture)
        assert not dciodvfy_errors(write_report(document, tmp_path))
        text = one_line(page_text(document))
        assert "Signed by Dupont, Élodie (CHU Liège) on 2026-03-14 09:26 (+0100)" in text
        assert "Chest CT: 3 mm nodule in the right upper lobe." in text and "UNVERIFIED" not in text
        assert document.VerificationFlag == "VERIFIED" and document.SeriesNumber == SIGNED_PDF_SERIES_NUMBER
        ai_pdf_series = pdf_uids(ai_sr)[0]
        assert document.SeriesInstanceUID != ai_pdf_series
        assert document.SourceInstanceSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID

    def test_an_amendment_says_amended_and_shares_the_signed_pdf_series(self, ai_sr, picture):
        first = signed(ai_sr, ai_sr, "Chest CT: 3 mm nodule.")
        amended = signed(ai_sr, first, "Chest CT: 4 mm nodule, follow-up in 6 months.", name="Martin^Paul")
        assert report_status(amended).kind == "amended"
        document = build_pdf_report(amended, picture)
        text = one_line(page_text(document))
        assert "Amended and signed by Martin, Paul (CHU Liège)" in text
        assert "replaces an earlier signed version" in text
        assert document.SeriesInstanceUID == build_pdf_report(first, None).SeriesInstanceUID
        assert document.SOPInstanceUID != pdf_uids(first)[1]


@pytest.mark.parametrize(("value", "expected"), [
    ("20260314092653.123456+0100", "2026-03-14 09:26 (+0100)"),
    ("20260314092653", "2026-03-14 09:26"),
    ("20260314-0500", "2026-03-14 (-0500)"),
    ("", ""),
    ("garbage", "garbage"),
])
def test_readable_datetime(value, expected):
    assert readable_datetime(value) == expected


def _saved(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
