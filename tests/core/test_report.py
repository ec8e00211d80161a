"""The Structured Report: the contract of docs/sr-contract.md, checked on the written file."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.sr.codedict import codes

from medblip_dicom.errors import ReportError
from medblip_dicom.report import SERIES_DESCRIPTION, build_report, write_report


def content_items(ds):
    """Yield every content item of an SR tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def code_of(item):
    c = item.ConceptNameCodeSequence[0]
    return (c.CodeValue, c.CodingSchemeDesignator)


@pytest.fixture
def ct(td):
    return pydicom.dcmread(td("CT_small.dcm"))


@pytest.fixture
def written(ct, captioner, tmp_path, validate_sr):
    sr = build_report(ct, "Axial CT of the chest.", captioner.identity)
    path = write_report(sr, tmp_path)
    validate_sr(path)
    return pydicom.dcmread(path)


class TestContract:
    def test_same_patient_and_study_new_series(self, ct, written):
        assert written.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
        assert written.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert written.Modality == "SR"
        assert written.StudyInstanceUID == ct.StudyInstanceUID
        assert written.PatientID == ct.PatientID and written.PatientName == ct.PatientName
        assert written.SeriesInstanceUID != ct.SeriesInstanceUID

    def test_flags_and_series_description(self, written):
        assert written.VerificationFlag == "UNVERIFIED"
        assert written.PreliminaryFlag == "PRELIMINARY"
        assert written.SeriesDescription == SERIES_DESCRIPTION
        assert "not for diagnosis" in written.SeriesDescription and len(SERIES_DESCRIPTION) <= 64

    def test_template_2000_root(self, written):
        assert code_of(written) == ("18748-4", "LN")
        template = written.ContentTemplateSequence[0]
        assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2000")

    def test_device_observer_is_the_model(self, written, captioner):
        items = list(content_items(written))
        observer_type = [i for i in items if code_of(i) == ("121005", "DCM")]
        assert observer_type[0].ConceptCodeSequence[0].CodeValue == codes.DCM.Device.value
        uid = [i for i in items if code_of(i) == ("121012", "DCM")]
        assert uid[0].UID == captioner.identity.device_uid
        name = [i for i in items if code_of(i) == ("121013", "DCM")]
        assert name[0].TextValue == captioner.identity.name
        assert written.DeviceSerialNumber == captioner.identity.weights_sha256

    def test_caption_inferred_from_source_image(self, written, ct):
        findings = [i for i in content_items(written) if code_of(i) == ("121070", "DCM")]
        assert len(findings) == 1
        finding = findings[0].ContentSequence[0]
        assert code_of(finding) == ("121071", "DCM") and finding.TextValue == "Axial CT of the chest."
        image = finding.ContentSequence[0]
        assert image.RelationshipType == "INFERRED FROM" and image.ValueType == "IMAGE"
        ref = image.ReferencedSOPSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (ct.SOPClassUID, ct.SOPInstanceUID)

    def test_evidence_references_the_source(self, written, ct):
        study = written.CurrentRequestedProcedureEvidenceSequence[0]
        assert study.StudyInstanceUID == ct.StudyInstanceUID
        series = study.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == ct.SeriesInstanceUID
        assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID

    def test_language_of_content(self, written):
        lang = [i for i in content_items(written) if code_of(i) == ("121049", "DCM")]
        assert lang[0].ConceptCodeSequence[0].CodeValue == "en-US"


class TestIdentity:
    def test_uid_is_stable_and_depends_on_source_and_model(self, ct, captioner, td):
        a = build_report(ct, "one caption", captioner.identity)
        b = build_report(ct, "another caption", captioner.identity)
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
        other = build_report(pydicom.dcmread(td("MR_small.dcm")), "x", captioner.identity)
        assert other.SOPInstanceUID != a.SOPInstanceUID
        from dataclasses import replace

        retrained = replace(captioner.identity, weights_sha256="0" * 64)
        assert build_report(ct, "x", retrained).SOPInstanceUID != a.SOPInstanceUID

    def test_rewrite_replaces_in_place(self, ct, captioner, tmp_path):
        first = write_report(build_report(ct, "first", captioner.identity), tmp_path)
        second = write_report(build_report(ct, "second", captioner.identity), tmp_path)
        assert first == second
        assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left behind


class TestSourceUntouched:
    def test_source_dataset_is_not_modified(self, td, captioner):
        for name in ("CT_small.dcm", "color-pl.dcm"):  # color-pl.dcm: retired US class, stand-in path
            ds = pydicom.dcmread(td(name), force=True)
            before = ds.to_json_dict()
            build_report(ds, "caption", captioner.identity)
            assert ds.to_json_dict() == before, name


class TestSparseSources:
    def test_missing_optional_attributes_still_valid(self, ct, captioner, tmp_path, validate_sr):
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName",
                        "StudyID", "StudyDate", "StudyTime", "PatientName", "PatientID", "InstanceNumber"):
            if keyword in ct:
                delattr(ct, keyword)
        path = write_report(build_report(ct, "caption", captioner.identity), tmp_path)
        validate_sr(path)
        assert pydicom.dcmread(path).PatientSex == ""

    def test_multiframe_source_references_the_frame(self, td, captioner):
        ds = pydicom.dcmread(td("emri_small.dcm"))
        sr = build_report(ds, "caption", captioner.identity, frame_index=4)
        image = [i for i in content_items(sr) if i.ValueType == "IMAGE"][0]
        assert image.ReferencedSOPSequence[0].ReferencedFrameNumber == 5

    def test_empty_caption_refused(self, ct, captioner):
        with pytest.raises(ReportError, match="empty caption"):
            build_report(ct, "   ", captioner.identity)

    def test_retired_sop_class_keeps_its_class_in_the_evidence(self, td, captioner, tmp_path, validate_sr):
        ds = pydicom.dcmread(td("color-pl.dcm"), force=True)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6"  # retired Ultrasound Image Storage
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
        path = write_report(build_report(ds, "caption", captioner.identity), tmp_path)
        validate_sr(path)
        ref = pydicom.dcmread(path).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert ref.ReferencedSOPSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.6"


#: Every patient and study attribute the report copies whose VM is 1 and whose VR allows several
#: values, with two values that are each valid for the VR: only the multiplicity is wrong.
TWO_VALUES = {
    "PatientName": ["Doe^Jane", "Roe^Richard"],
    "PatientID": ["ID1", "ID2"],
    "PatientBirthDate": ["19700101", "19800101"],
    "PatientSex": ["F", "M"],
    "PatientAge": ["042Y", "043Y"],
    "PatientSize": ["1.7", "1.8"],
    "PatientWeight": ["70", "71"],
    "EthnicGroup": ["A", "B"],
    "IssuerOfPatientID": ["HOSP", "CLINIC"],
    "AccessionNumber": ["A1", "A2"],
    "StudyID": ["S1", "S2"],
    "StudyDate": ["20200101", "20200102"],
    "StudyTime": ["101010", "111111"],
    "ReferringPhysicianName": ["Who^Doctor", "What^Doctor"],
    "StudyDescription": ["Chest", "Abdomen"],
}


class TestValueMultiplicity:
    def test_the_list_covers_every_copied_attribute_with_vm_1(self):
        from pydicom.datadict import dictionary_VM

        from medblip_dicom.report import _EVIDENCE_COPY

        multi_value_vrs = {"LO", "PN", "SH", "DA", "TM", "CS", "AS", "DS", "IS", "UI"}
        vm1 = {k for k in _EVIDENCE_COPY
               if dictionary_VM(pydicom.datadict.tag_for_keyword(k)) == "1"
               and pydicom.datadict.dictionary_VR(pydicom.datadict.tag_for_keyword(k)) in multi_value_vrs}
        uids = {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"}  # refused by the reader
        assert vm1 - uids == set(TWO_VALUES)

    @pytest.mark.parametrize("keyword", sorted(TWO_VALUES))
    def test_two_values_in_a_vm_1_attribute_are_left_out_and_the_sr_stays_valid(self, keyword, ct, captioner,
                                                                               tmp_path, validate_sr):
        setattr(ct, keyword, TWO_VALUES[keyword])
        assert ct[keyword].VM == 2
        path = write_report(build_report(ct, "caption", captioner.identity), tmp_path)
        validate_sr(path)  # dciodvfy: zero errors (it reported a VM error here before the check)
        written = pydicom.dcmread(path)
        assert written.get(keyword) in (None, "")  # type 2: present but empty; type 3: absent

    def test_vm_rules(self):
        from medblip_dicom.report import vm_allows

        assert vm_allows("1", 1) and not vm_allows("1", 2) and vm_allows("1", 0)
        assert vm_allows("1-n", 7) and vm_allows("1-3", 3) and not vm_allows("1-3", 4)
        assert vm_allows("2-2n", 4) and not vm_allows("2-2n", 3) and not vm_allows("2-2n", 1)
        assert vm_allows("3", 3) and not vm_allows("3", 2)


def test_warm_up_builds_a_throwaway_report_without_touching_anything(tmp_path, monkeypatch):
    from medblip_dicom.report import warm_up

    monkeypatch.chdir(tmp_path)
    warm_up()  # raises if the stand-in source could not be reported on
    assert list(tmp_path.iterdir()) == []


def test_the_orders_a_source_answers_travel_with_its_report(ct, captioner, tmp_path, validate_sr):
    """A source's Request Attributes Sequence becomes the SR's Referenced Request Sequence, so the RIS
    that gets the result (HL7 ORC/OBR, FHIR basedOn) can match it to its order."""
    from pydicom.dataset import Dataset

    from medblip_dicom.report_view import read_document

    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP1", "SPS1"
    request.PlacerOrderNumberImagingServiceRequest, request.FillerOrderNumberImagingServiceRequest = "PL-9", "FI-7"
    ct.AccessionNumber, ct.RequestAttributesSequence = "A123456", [request]
    path = write_report(build_report(ct, "Axial CT of the chest.", captioner.identity), tmp_path)
    validate_sr(path)  # dciodvfy: 0 errors with the sequence's type 2 attributes present
    sr = pydicom.dcmread(path)
    (item,) = sr.ReferencedRequestSequence
    assert item.StudyInstanceUID == ct.StudyInstanceUID and item.RequestedProcedureDescription == ""
    order = read_document(sr).order
    assert (order.accession_number, order.placer_order_number, order.filler_order_number,
            order.requested_procedure_id) == ("A123456", "PL-9", "FI-7", "RP1")


def test_a_source_without_requests_gives_a_report_without_them(written):
    assert "ReferencedRequestSequence" not in written
