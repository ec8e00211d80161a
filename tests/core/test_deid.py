"""De-identification of one object: the profile and its options, keyed pseudonyms, date shifts,
burned-in text, and the key file."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pydicom
import pytest

pytest.importorskip("deid")

from medblip_dicom.deid import Deidentifier, KeyFileError, Pseudonyms, new_key, read_key  # noqa: E402
from medblip_dicom.deid.errors import DeidentificationError  # noqa: E402
from medblip_dicom.uids import is_dicom_uid  # noqa: E402

from tests.support.dicom import testdata as data_file  # noqa: E402
from tests.support.phi import INSTITUTION, OPERATOR, PRIVATE_NOTE, REFERRING, crafted  # noqa: E402
from tests.support.privacy import PATIENT_ID, PATIENT_NAME  # noqa: E402

KEY = b"0123456789abcdef" * 4


def deid(*options: str, key: bytes = KEY, **kw: object) -> Deidentifier:
    return Deidentifier(Pseudonyms(key), options, **kw)


def day(text: str) -> dt.date:
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


class TestPseudonyms:
    def test_uids_are_valid_2_25_uids_stable_per_key_and_distinct_per_value(self):
        p, other = Pseudonyms(KEY), Pseudonyms(KEY[::-1])
        uid = p.uid("1.2.3.4.5")
        assert uid.startswith("2.25.") and is_dicom_uid(uid) and len(uid) <= 64
        assert p.uid("1.2.3.4.5") == uid and p.uid("1.2.3.4.6") != uid and other.uid("1.2.3.4.5") != uid

    def test_identifiers_fit_sh_and_differ_by_kind(self):
        p = Pseudonyms(KEY)
        assert len(p.identifier("X123")) == 16 and p.identifier("") == ""
        assert p.patient_id("X123") != p.identifier("X123")  # a patient ID and an accession that are equal
        assert p.patient_name("X123") == f"ANONYMOUS^{p.patient_id('X123')}"

    def test_day_shifts_are_backwards_within_ten_years_and_per_patient(self):
        p = Pseudonyms(KEY)
        shifts = {p.day_shift(f"patient {i}") for i in range(50)}
        assert all(-3650 <= s <= -1 for s in shifts) and len(shifts) > 40

    def test_a_short_key_is_refused(self):
        with pytest.raises(KeyFileError, match="at least 32"):
            Pseudonyms(b"short")


class TestKeyFile:
    def test_new_key_is_private_random_and_never_overwritten(self, tmp_path):
        path = new_key(tmp_path / "site.key")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(read_key(path)) == 64 and read_key(path) != read_key(new_key(tmp_path / "other.key"))
        with pytest.raises(KeyFileError, match="never overwritten"):
            new_key(path)

    def test_missing_or_short_keys_say_how_to_make_one(self, tmp_path):
        with pytest.raises(KeyFileError, match="--new-key"):
            read_key(tmp_path / "absent.key")
        (tmp_path / "short.key").write_text("abc")
        with pytest.raises(KeyFileError, match="3 bytes"):
            read_key(tmp_path / "short.key")

    def test_a_key_others_can_read_is_used_with_a_warning(self, tmp_path, caplog):
        path = tmp_path / "open.key"
        path.write_text("k" * 40)
        os.chmod(path, 0o644)
        assert read_key(path) == b"k" * 40
        assert "readable by others" in caplog.text


class TestBasicProfile:
    def test_identifying_attributes_go_and_the_method_is_recorded(self, tmp_path):
        src = pydicom.dcmread(crafted(tmp_path))
        out = deid().dataset(src).dataset
        assert out.PatientIdentityRemoved == "YES"
        assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
        assert out.DeidentificationMethod[0] == "PS3.15 Annex E Basic Profile"
        assert out.LongitudinalTemporalInformationModified == "REMOVED"
        assert str(out.PatientName).startswith("ANONYMOUS^ID") and out.PatientID != PATIENT_ID
        for gone in ("PatientAddress", "PatientTelephoneNumbers", "InstitutionName",
                     "OtherPatientIDsSequence", "RequestAttributesSequence", "ReferencedStudySequence",
                     "StudyDescription", "ImageComments"):
            assert gone not in out, gone
        assert not out.ReferringPhysicianName and not out.OperatorsName  # every other person name: emptied
        assert not out.PatientBirthDate and not out.StudyDate and not out.PatientSex
        assert not any(e.tag.is_private for e in out.iterall())
        assert out.preamble == b"\0" * 128
        assert PATIENT_NAME.encode() not in _bytes(out) and PRIVATE_NOTE.encode() not in _bytes(out)

    def test_the_source_is_not_changed_and_standard_uids_are_kept(self, tmp_path):
        src = pydicom.dcmread(crafted(tmp_path))
        before = src.SOPInstanceUID
        out = deid().dataset(src).dataset
        assert src.SOPInstanceUID == before and src.PatientName == PATIENT_NAME
        assert out.SOPClassUID == src.SOPClassUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != before
        assert is_dicom_uid(out.SOPInstanceUID) and is_dicom_uid(out.FrameOfReferenceUID)

    def test_studies_and_series_stay_together_and_runs_agree(self, tmp_path):
        study = pydicom.uid.generate_uid()
        a = pydicom.dcmread(crafted(tmp_path, study_uid=study, instance=1))
        b = pydicom.dcmread(crafted(tmp_path, study_uid=study, instance=2))
        one, again = deid().dataset(a).dataset, deid().dataset(a).dataset
        two = deid().dataset(b).dataset
        assert one.StudyInstanceUID == two.StudyInstanceUID and one.SOPInstanceUID != two.SOPInstanceUID
        assert one.PatientID == two.PatientID and one.AccessionNumber == two.AccessionNumber
        assert (one.SOPInstanceUID, one.PatientID) == (again.SOPInstanceUID, again.PatientID)
        other = deid(key=KEY[::-1]).dataset(a).dataset
        assert other.SOPInstanceUID != one.SOPInstanceUID and other.PatientID != one.PatientID

    def test_real_test_files_come_out_readable_and_decodable(self):
        for name in ("MR_small_RLE.dcm", "693_J2KR.dcm", "emri_small.dcm"):
            result = deid().dataset(pydicom.dcmread(data_file(name)))
            out = pydicom.dcmread(_io(result.dataset))
            assert out.pixel_array.shape and out.PatientIdentityRemoved == "YES", name


class TestOptions:
    def test_modified_dates_shift_every_date_of_one_patient_alike(self, tmp_path):
        src = pydicom.dcmread(crafted(tmp_path, SeriesDate="20230516", StudyTime="101500"))
        result = deid("retain-modified-dates").dataset(src)
        out = result.dataset
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "113107" in [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
        shift = dt.timedelta(days=result.day_shift)
        assert day(out.StudyDate) == day("20230514") + shift and day(out.SeriesDate) == day("20230516") + shift
        assert out.StudyTime == "101500" and out.PatientBirthDate == ""
        other_patient = pydicom.dcmread(crafted(tmp_path, PatientID="ZZ-1"))
        assert deid("retain-modified-dates").dataset(other_patient).day_shift != result.day_shift

    def test_retain_options_keep_what_they_name(self, tmp_path):
        src = pydicom.dcmread(crafted(tmp_path, StationName="CT-ROOM-3", PatientAge="062Y", PatientSex="F"))
        plain = deid().dataset(src).dataset
        kept = deid("retain-device-identity", "retain-institution-identity",
                    "retain-patient-characteristics").dataset(src).dataset
        assert "StationName" not in plain and kept.StationName == "CT-ROOM-3"
        assert "InstitutionName" not in plain and kept.InstitutionName == INSTITUTION
        assert "PatientAge" not in plain and not plain.PatientSex and (kept.PatientAge, kept.PatientSex) == ("062Y", "F")

    def test_clean_descriptors_keeps_descriptions_without_identifiers(self, tmp_path):
        src = pydicom.dcmread(crafted(tmp_path))
        out = deid("clean-descriptors").dataset(src).dataset
        assert out.StudyDescription == "CT chest for"
        assert out.ImageComments == "patient seen"

    def test_an_unknown_option_lists_the_known_ones(self):
        with pytest.raises(DeidentificationError, match="retain-modified-dates"):
            deid("retain-everything")


class TestBurnedInText:
    def test_burned_in_yes_and_risky_modalities_are_refused_with_a_reason(self, tmp_path):
        yes = deid().dataset(pydicom.dcmread(crafted(tmp_path, BurnedInAnnotation="YES")))
        assert yes.dataset is None and "BurnedInAnnotation is YES" in yes.refused
        us = deid().dataset(pydicom.dcmread(data_file("US1_J2KR.dcm")))
        assert us.dataset is None and "modality US" in us.refused
        cr = pydicom.dcmread(crafted(tmp_path, Modality="CR"))
        assert "CR without BurnedInAnnotation NO" in deid().dataset(cr).refused
        cr.BurnedInAnnotation = "NO"
        assert deid().dataset(cr).refused is None

    def test_a_mask_recipe_blacks_out_its_regions_and_lets_the_image_through(self, tmp_path):
        recipe = tmp_path / "mask.dicom"
        recipe.write_text("FORMAT dicom\n\n%filter graylist\n\nLABEL Test ultrasound banner\n"
                          "  contains Modality US\n  coordinates 0,0,64,20\n")
        src = pydicom.dcmread(crafted(tmp_path, Modality="US"))
        result = deid(mask_recipe=str(recipe)).dataset(src)
        assert result.refused is None and result.masked
        pixels = result.dataset.pixel_array
        assert not pixels[:20, :64].any() and (pixels[20:, :] == src.pixel_array[20:, :]).all()
        assert "113101" in [c.CodeValue for c in result.dataset.DeidentificationMethodCodeSequence]
        other = deid(mask_recipe=str(recipe)).dataset(pydicom.dcmread(crafted(tmp_path, Modality="SC")))
        assert other.dataset is None and "no mask recipe matches" in other.refused

    def test_a_recipe_without_filters_is_refused(self, tmp_path):
        recipe = tmp_path / "header-only.dicom"
        recipe.write_text("FORMAT dicom\n\n%header\n\nREMOVE PatientName\n")
        with pytest.raises(DeidentificationError, match="%filter"):
            deid(mask_recipe=str(recipe))


def test_every_attribute_the_recipes_name_is_a_dicom_keyword():
    """deid matches a misspelt keyword to nothing: such a line would silently keep what it names."""
    import re

    from pydicom.datadict import keyword_dict

    from medblip_dicom.deid.profile import recipe_path

    lines = [line.split() for path in recipe_path("basic.dicom").parent.glob("*.dicom")
             for line in path.read_text().splitlines() if re.match(r"(REMOVE|BLANK|KEEP|REPLACE) ", line)]
    named = [words[1] for words in lines if ":" not in words[1]]
    assert len(named) > 150 and [n for n in named if n not in keyword_dict] == []


def test_without_deid_the_error_names_the_extra(monkeypatch):
    import builtins

    from medblip_dicom.errors import MissingDependencyError

    real = builtins.__import__

    def no_deid(name, *args, **kwargs):
        if name == "deid" or name.startswith("deid."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deid)
    with pytest.raises(MissingDependencyError, match=r"medblip-dicom\[deid\]"):
        deid()


def test_names_of_people_other_than_the_patient_are_emptied(tmp_path):
    out = deid().dataset(pydicom.dcmread(crafted(tmp_path))).dataset
    text = _bytes(out)
    for name in (REFERRING, OPERATOR):
        assert name.split("^")[0].encode() not in text


def _bytes(ds: pydicom.Dataset) -> bytes:
    return _io(ds).getvalue()


def _io(ds: pydicom.Dataset):
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer
