"""One text rule for DICOM: Unicode kept (ISO_IR 192), VR characters enforced, copied values decoded."""

from __future__ import annotations

import unicodedata

import pydicom
import pytest

from medblip_dicom.dicomtext import UTF8, TextError, dicom_text
from medblip_dicom.identity import ModelIdentity
from medblip_dicom.report import build_report, write_report
from medblip_dicom.report_view import CaptionReport

#: What a radiologist writes and what ROCO captions are full of: symbols, Latin-1, Greek, CJK.
SIGNED = "Nodule ≥ 8 mm, ≤ 2 cm; 5 µg; 90°; ± 1; naïve; 肺結節"
ROCO_LIKE = [
    SIGNED,
    "Axial CT shows a 3 × 4 cm² mass; 5 μg/kg contrast, 45° tilt",
    "Échographie: kyste de 2 × 3 cm, paroi fine, débit ±",
    "T2 hyperintense lesion (≈ 12 mm³), Ø 8 mm, β-HCG normal",
]
#: Characters no DICOM text may hold: NUL, ESC, NEXT LINE (C1), LINE SEPARATOR.
CONTROLS = ["\x00", "\x1b", "\u0085", "\u2028"]
IDENTITY = ModelIdentity("tiny-blip", "v1.0", "ab" * 32, "test")


def finding_of(path):
    return CaptionReport.from_file(path).caption


def finding_bytes(path) -> bytes:
    """The Finding's TextValue exactly as stored in the file (trailing padding removed)."""
    from medblip_dicom.report_view import content_items

    sr = pydicom.dcmread(path)
    for item in content_items(sr):
        if item.ConceptNameCodeSequence[0].CodeValue == "121071" and item.ValueType == "TEXT":
            return item.get_item(0x0040A160).value.rstrip(b" ")
    raise AssertionError(f"{path} holds no Finding")


class TestTheRule:
    def test_unicode_is_kept(self):
        assert dicom_text(SIGNED, "UT", what="the signed text") == SIGNED

    def test_text_is_nfc_so_one_visible_text_has_one_encoding(self):
        decomposed = unicodedata.normalize("NFD", "naïve Échographie")
        assert decomposed != "naïve Échographie"
        assert dicom_text(decomposed, "UT", what="x") == "naïve Échographie"
        assert dicom_text(decomposed, "UT", what="x", machine=True) == "naïve Échographie"

    @pytest.mark.parametrize("char", CONTROLS + ["\u202e", "\u2029", "\x7f"])
    def test_human_text_with_a_refused_character_is_refused_naming_it_and_its_position(self, char):
        with pytest.raises(TextError) as caught:
            dicom_text(f"Nodule{char} 8 mm", "UT", what="the signed text")
        message = str(caught.value)
        assert f"U+{ord(char):04X}" in message and "position 7" in message and "the signed text" in message
        assert caught.value.position == 7 and caught.value.character == char

    @pytest.mark.parametrize("vr", ["LO", "SH", "PN"])
    @pytest.mark.parametrize("char", ["\\", "\r", "\n", "\f", "\t"])
    def test_names_and_short_strings_refuse_backslash_and_line_breaks(self, vr, char):
        with pytest.raises(TextError, match=f"U\\+{ord(char):04X}"):
            dicom_text(f"Doe{char}Jo", vr, what="the name")

    @pytest.mark.parametrize("vr", ["ST", "LT", "UT"])
    def test_texts_allow_cr_lf_ff_tab_and_backslash(self, vr):
        text = "line one\r\nline two\ftab\there C:\\path"
        assert dicom_text(text, vr, what="x") == text

    @pytest.mark.parametrize("char", CONTROLS + ["\u202e", "\x07"])
    def test_machine_text_loses_refused_characters(self, char):
        cleaned = dicom_text(f"mass{char}in   the\tlung ", "UT", what="the caption", machine=True)
        assert char not in cleaned and cleaned in ("massin the lung", "mass in the lung")

    def test_lengths_count_characters_not_bytes(self):
        assert dicom_text("肺" * 64, "LO", what="x") == "肺" * 64  # 192 bytes in UTF-8, 64 characters
        with pytest.raises(TextError, match="65 characters.*at most 64"):
            dicom_text("肺" * 65, "LO", what="the organization")
        # Machine text is cut to fit in characters and in UTF-8 bytes (validators and PACS count bytes).
        assert dicom_text("x" * 70, "LO", what="x", machine=True) == "x" * 64
        assert dicom_text("µ" * 70, "LO", what="x", machine=True) == "µ" * 32
        assert dicom_text("é" * 17, "SH", what="x", machine=True) == "é" * 8

    def test_person_names_are_limited_per_component_group(self):
        name = "Yamada^Tarou=" + "山" * 64 + "=やまだ^たろう"
        assert dicom_text(name, "PN", what="the name") == name
        with pytest.raises(TextError, match="component group"):
            dicom_text("Yamada^Tarou=" + "山" * 65, "PN", what="the name")


def _saved(ds, tmp_path, name):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


class TestReports:
    @pytest.mark.parametrize("caption", ROCO_LIKE)
    def test_roco_captions_are_written_in_utf8_and_read_back_exactly(self, caption, td, tmp_path, validate_sr):
        ct = pydicom.dcmread(td("CT_small.dcm"))  # declares ISO_IR 100, which has no ≥, μ or 肺
        path = write_report(build_report(ct, caption, IDENTITY), tmp_path)
        validate_sr(path)  # dciodvfy: 0 errors; dsrdump reads it
        assert pydicom.dcmread(path).SpecificCharacterSet == UTF8
        assert finding_of(path) == caption
        assert finding_bytes(path) == caption.encode("utf-8")

    def test_a_source_without_character_set_gets_utf8_declared(self, td, tmp_path, validate_sr):
        ct = pydicom.dcmread(td("CT_small.dcm"))
        del ct.SpecificCharacterSet
        source = _saved(ct, tmp_path, "no-charset.dcm")
        path = write_report(build_report(source, "5 µg; 2 cm²; 肺結節", IDENTITY), tmp_path / "out")
        validate_sr(path)
        assert pydicom.dcmread(path).SpecificCharacterSet == UTF8
        assert finding_of(path) == "5 µg; 2 cm²; 肺結節"
        assert b" \xb5g" not in path.read_bytes()  # no Latin-1 µ anywhere

    def test_an_ascii_report_declares_no_character_set(self, td, tmp_path, validate_sr):
        ct = pydicom.dcmread(td("CT_small.dcm"))
        path = write_report(build_report(ct, "Axial CT of the chest.", IDENTITY), tmp_path)
        validate_sr(path)
        assert "SpecificCharacterSet" not in pydicom.dcmread(path)

    def test_a_latin1_source_keeps_its_names_in_the_report(self, td, tmp_path, validate_sr):
        ct = pydicom.dcmread(td("CT_small.dcm"))
        assert ct.SpecificCharacterSet == "ISO_IR 100"
        ct.PatientName, ct.StudyDescription = "Müller^Jürgen", "Thorax, côtes"
        source = _saved(ct, tmp_path, "latin1.dcm")
        assert "Müller".encode("latin-1") in (tmp_path / "latin1.dcm").read_bytes()
        path = write_report(build_report(source, "Axial CT of the chest.", IDENTITY), tmp_path / "out")
        validate_sr(path)
        sr = pydicom.dcmread(path)
        assert sr.SpecificCharacterSet == UTF8
        assert str(sr.PatientName) == "Müller^Jürgen" and sr.StudyDescription == "Thorax, côtes"
        assert "Müller^Jürgen".encode("utf-8") in path.read_bytes()

    def test_a_japanese_iso2022_source_keeps_its_names_in_the_report(self, td, tmp_path, validate_sr):
        ct = pydicom.dcmread(td("CT_small.dcm"))
        ct.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        ct.PatientName = name
        source = _saved(ct, tmp_path, "jis.dcm")
        assert b"\x1b$B" in (tmp_path / "jis.dcm").read_bytes()  # the name is ISO 2022 encoded
        path = write_report(build_report(source, "肺結節 8 mm", IDENTITY), tmp_path / "out")
        validate_sr(path)
        sr = pydicom.dcmread(path)
        assert sr.SpecificCharacterSet == UTF8 and str(sr.PatientName) == name
        assert finding_of(path) == "肺結節 8 mm"
        assert b"\x1b" not in path.read_bytes()

    def test_control_characters_in_a_caption_are_removed(self, td, tmp_path, validate_sr):
        ct = pydicom.dcmread(td("CT_small.dcm"))
        caption = "5 µg{} in the {}left{} lower{}lobe".format(*CONTROLS)
        path = write_report(build_report(ct, caption, IDENTITY), tmp_path)
        validate_sr(path)  # dciodvfy said "Character invalid for this VR" for NUL and ESC
        assert finding_bytes(path) == "5 µg in the left lower lobe".encode("utf-8")

    def test_a_model_name_with_a_backslash_and_unicode_stays_valid(self, td, tmp_path, validate_sr):
        ct = pydicom.dcmread(td("CT_small.dcm"))
        identity = ModelIdentity("modèle\\radiologie " + "x" * 80, "v1\x00", "ab" * 32, "test")
        path = write_report(build_report(ct, "caption", identity), tmp_path)
        validate_sr(path)
        sr = pydicom.dcmread(path)
        assert sr.ManufacturerModelName.startswith("modèleradiologie x")
        assert len(sr.ManufacturerModelName.encode("utf-8")) == 64
        assert CaptionReport.from_file(path).model_name == sr.ManufacturerModelName
