"""caption_dicom / caption_dicoms end to end, including every real test file we have."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from medblip_dicom import CaptionFailure, CaptionResult, caption_dicom, caption_dicoms
from medblip_dicom.errors import MedblipError, NotAnImageError, NotDicomError

ALL_FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))

#: One file per transfer syntax family and photometric interpretation that must caption.
MUST_CAPTION = [
    "RG1_UNCI.dcm",  # chest CR, MONOCHROME1
    "RG1_J2KR.dcm",  # JPEG 2000 lossless
    "RG3_J2KI.dcm",  # JPEG 2000 lossy
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "OBXXXX1A.dcm",  # palette colour
    "US1_UNCR.dcm",  # RGB ultrasound
    "color3d_jpeg_baseline.dcm",  # YBR_FULL_422 multi-frame
]


@pytest.fixture(scope="module")
def every_file(captioner, tmp_path_factory):
    """Caption every file of pydicom's test data and pydicom-data in batched runs. Several files are
    variants of one instance (one SOPInstanceUID in other transfer syntaxes), and a run captions
    one source per SOPInstanceUID: each variant goes into a run of its own."""
    runs: list[list[str]] = []
    seen: dict[str, int] = {}
    for path in ALL_FILES:
        try:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID", ""))
        except Exception:  # noqa: BLE001 - unreadable: the pipeline says why
            uid = ""
        index = seen[uid] = seen.get(uid, -1) + 1 if uid else 0
        while len(runs) <= index:
            runs.append([])
        runs[index].append(path)
    outcomes = {}
    for i, paths in enumerate(runs):
        out = tmp_path_factory.mktemp(f"every-file-srs-{i}")
        outcomes.update(zip(paths, caption_dicoms(paths, model=captioner, output_dir=out, batch_size=8)))
    return {path: outcomes[path] for path in ALL_FILES}


def test_test_data_is_all_there():
    assert len(ALL_FILES) >= 200
    names = {os.path.basename(f) for f in ALL_FILES}
    assert set(MUST_CAPTION) <= names, "pydicom-data is not installed"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: os.path.relpath(p, os.path.dirname(os.path.dirname(p))))
def test_every_file_gives_a_valid_sr_or_a_clear_error(every_file, path, validate_sr, tmp_path):
    outcome = every_file[path]
    assert outcome.source == path
    if isinstance(outcome, CaptionResult):
        assert outcome.sr_path is not None and outcome.sr_path.exists()
        # Several test files are variants of one instance (same SOPInstanceUID) and so share one
        # SR file name; validate this source's own report.
        own = tmp_path / outcome.sr_path.name
        outcome.sr.save_as(own, enforce_file_format=True)
        dump = validate_sr(own)
        assert outcome.caption[:20] in dump
        assert pydicom.dcmread(outcome.sr_path).StudyInstanceUID == pydicom.dcmread(path, stop_before_pixels=True, force=True).StudyInstanceUID
    else:
        assert isinstance(outcome, CaptionFailure)
        assert isinstance(outcome.error, MedblipError)
        message = str(outcome.error)
        assert message.startswith(path + ": ")
        assert len(message) > len(path) + 15


@pytest.mark.parametrize("name", MUST_CAPTION)
def test_every_supported_syntax_and_colour_model_captions(every_file, td, name):
    outcome = every_file[td(name)]
    assert isinstance(outcome, CaptionResult), str(getattr(outcome, "error", ""))


def test_outcome_summary_is_plausible(every_file):
    ok = [o for o in every_file.values() if isinstance(o, CaptionResult)]
    refused = [o for o in every_file.values() if isinstance(o, CaptionFailure)]
    assert len(ok) >= 130
    assert any(isinstance(o.error, NotAnImageError) for o in refused)
    assert any(isinstance(o.error, NotDicomError) for o in refused)
    srs = {o.sr_sop_instance_uid for o in ok}
    sources = {o.sop_instance_uid for o in ok}
    assert len(srs) == len(sources)  # one SR UID per distinct source instance


class TestCaptionDicom:
    def test_path_bytes_and_dataset_agree(self, captioner, td):
        path = td("MR_small.dcm")
        a = caption_dicom(path, model=captioner)
        b = caption_dicom(Path(path).read_bytes(), model=captioner)
        c = caption_dicom(pydicom.dcmread(path), model=captioner)
        assert a.caption == b.caption == c.caption
        assert a.sr_sop_instance_uid == b.sr_sop_instance_uid == c.sr_sop_instance_uid
        assert a.sr_path is None

    def test_writes_sr_and_reports_timings(self, captioner, td, tmp_path):
        result = caption_dicom(td("RG1_UNCI.dcm"), model=captioner, output_dir=tmp_path)
        assert result.sr_path == tmp_path / f"{result.sr_sop_instance_uid}.dcm"
        assert set(result.timings) >= {"read_s", "pixels_s", "caption_s", "report_s", "write_s"}
        assert result.frame_index == 0

    def test_same_instance_twice_one_report(self, captioner, td, tmp_path):
        first = caption_dicom(td("CT_small.dcm"), model=captioner, output_dir=tmp_path)
        second = caption_dicom(td("CT_small.dcm"), model=captioner, output_dir=tmp_path)
        assert first.sr_path == second.sr_path
        assert len(list(tmp_path.iterdir())) == 1

    def test_model_directory_path_is_loaded(self, tiny_model_dir, td):
        result = caption_dicom(td("CT_small.dcm"), model=tiny_model_dir, device="cpu", dtype="float32")
        assert result.caption

    def test_errors_are_raised(self, captioner, td):
        with pytest.raises(NotAnImageError, match="test-SR.dcm"):
            caption_dicom(td("test-SR.dcm"), model=captioner)

    def test_explicit_frame(self, captioner, td):
        result = caption_dicom(td("emri_small.dcm"), model=captioner, frame=2)
        assert result.frame_index == 2


class TestCaptionDicoms:
    def test_order_kept_and_failures_interleaved(self, captioner, td, tmp_path):
        junk = tmp_path / "junk.dcm"
        junk.write_bytes(b"\x00" * 300)
        sources = [td("CT_small.dcm"), str(junk), td("MR_small.dcm"), td("rtplan.dcm"), td("US1_UNCR.dcm")]
        outcomes = list(caption_dicoms(sources, model=captioner, batch_size=2, workers=2))
        assert [o.source for o in outcomes] == sources
        assert [o.ok for o in outcomes] == [True, False, True, False, True]

    def test_batching_does_not_change_captions(self, captioner, td):
        sources = [td(n) for n in ("CT_small.dcm", "MR_small.dcm", "RG3_UNCI.dcm", "OBXXXX1A.dcm")]
        one = [o.caption for o in caption_dicoms(sources, model=captioner, batch_size=1, workers=0)]
        four = [o.caption for o in caption_dicoms(sources, model=captioner, batch_size=4)]
        assert one == four

    def test_a_value_that_breaks_its_vr_fails_its_source_only(self, captioner, td, tmp_path):
        """A 6-byte FD parses (the node accepts it) but cannot be converted: that source fails
        with a reason; the others in its batch are captioned."""
        import io

        ds = pydicom.dcmread(td("CT_small.dcm"))
        ds.DiffusionBValue = 1000.0  # (0018,9087) FD
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = bytearray(buf.getvalue())
        at = data.index(b"\x18\x00\x87\x90FD\x08\x00")
        data[at + 6:at + 16] = b"\x06\x00" + bytes(data[at + 8:at + 14])  # length 6, value cut to 6 bytes
        bad = tmp_path / "bad-fd.dcm"
        bad.write_bytes(bytes(data))
        sources = [td("MR_small.dcm"), str(bad), td("US1_UNCR.dcm")]
        outcomes = list(caption_dicoms(sources, model=captioner, batch_size=3, workers=1))
        assert [o.ok for o in outcomes] == [True, False, True]
        assert "bad-fd.dcm" in str(outcomes[1].error)

    def test_rejects_bad_batch_size(self, captioner):
        with pytest.raises(ValueError, match="batch_size"):
            list(caption_dicoms([], model=captioner, batch_size=0))
