"""CaptionReport reads our own SRs back: what build_report wrote comes out, found by concept codes."""

from __future__ import annotations

import pydicom
import pytest

from medblip_dicom.errors import ReportError
from medblip_dicom.report import build_report, write_report
from medblip_dicom.report_view import CaptionReport


def test_reads_back_everything_the_report_says(td, captioner, tmp_path):
    source = pydicom.dcmread(td("emri_small.dcm"))
    sr = build_report(source, "Axial MR slice of the brain.", captioner.identity, frame_index=3)
    report = CaptionReport.from_file(write_report(sr, tmp_path))
    ident = captioner.identity
    assert report.caption == "Axial MR slice of the brain."
    assert (report.model_name, report.model_version, report.weights_sha256) == (ident.name, ident.version,
                                                                                 ident.weights_sha256)
    assert report.device_uid == ident.device_uid
    assert (report.source_sop_class_uid, report.source_sop_instance_uid) == (source.SOPClassUID, source.SOPInstanceUID)
    assert report.source_frames == (4,)
    assert (report.verification_flag, report.preliminary_flag, report.completion_flag) == \
        ("UNVERIFIED", "PRELIMINARY", "PARTIAL")
    assert not report.verified and report.manufacturer == "medblip-dicom"
    assert (report.study_instance_uid, report.sop_instance_uid) == (source.StudyInstanceUID, sr.SOPInstanceUID)


def test_order_of_content_items_does_not_matter(td, captioner):
    sr = build_report(pydicom.dcmread(td("CT_small.dcm")), "caption here", captioner.identity)
    sr.ContentSequence = list(reversed(sr.ContentSequence))  # findings first, observer context last
    report = CaptionReport.from_dataset(sr)
    assert report.caption == "caption here" and report.model_name == captioner.identity.name


def test_single_frame_source_has_no_frames(td, captioner):
    report = CaptionReport.from_dataset(build_report(pydicom.dcmread(td("CT_small.dcm")), "x y", captioner.identity))
    assert report.source_frames == ()


@pytest.mark.parametrize("name", ["CT_small.dcm", "test-SR.dcm"])
def test_other_files_are_refused_naming_them(td, name):
    with pytest.raises(ReportError) as info:
        CaptionReport.from_file(td(name))
    assert str(info.value).startswith(td(name) + ": ")


def test_an_unreadable_file_is_a_report_error(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(ReportError, match="junk.dcm: cannot be read as DICOM"):
        CaptionReport.from_file(junk)
