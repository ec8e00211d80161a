"""The CPU side in processes (CpuPool) gives exactly what the threaded pipeline gives."""

from __future__ import annotations

import pickle

import pydicom
import pytest

from medblip_dicom import caption_dicoms
from medblip_dicom.cpupool import CpuPool
from medblip_dicom.errors import DicomReadError, NotAnImageError


def _timeless(path) -> pydicom.Dataset:
    """An SR without its dates and times (creation and content times differ between two runs)."""
    ds = pydicom.dcmread(path)

    def strip(d: pydicom.Dataset) -> None:
        for elem in list(d):
            if elem.VR in ("DA", "TM", "DT"):
                del d[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    strip(item)

    strip(ds)
    return ds


def test_project_errors_survive_a_process_boundary():
    err = pickle.loads(pickle.dumps(NotAnImageError("x.dcm", "a Structured Report, not an image")))
    assert type(err) is NotAnImageError and (err.source, err.reason) == ("x.dcm", "a Structured Report, not an image")
    assert str(err) == str(NotAnImageError("x.dcm", "a Structured Report, not an image"))
    assert isinstance(err, DicomReadError)


def test_pool_outcomes_equal_the_threaded_pipeline(captioner, td, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 300)
    sources = [td("CT_small.dcm"), str(junk), td("MR_small.dcm"), td("rtplan.dcm"), td("US1_UNCR.dcm"),
               td("RG3_J2KR.dcm"), td("SC_rgb_rle.dcm")]  # (MR_small_RLE is MR_small's SOPInstanceUID: a Duplicate)
    threaded = list(caption_dicoms(sources, model=captioner, batch_size=2, output_dir=tmp_path / "threads"))
    with CpuPool(captioner, processes=2) as pool:
        pool.warm_up()
        pooled = list(caption_dicoms(sources, model=captioner, batch_size=2, output_dir=tmp_path / "pool",
                                     pool=pool))
        again = list(caption_dicoms(sources[:2], model=captioner, batch_size=1, pool=pool))  # reusable
    assert [o.source for o in pooled] == sources
    assert [o.ok for o in pooled] == [o.ok for o in threaded] == [True, False, True, False, True, True, True]
    for a, b in zip(threaded, pooled):
        if a.ok:
            assert (a.caption, a.sr_sop_instance_uid, a.frame_index) == (b.caption, b.sr_sop_instance_uid, b.frame_index)
            assert b.sr_path is not None and _timeless(b.sr_path) == _timeless(a.sr_path)
            assert {"read_s", "pixels_s", "caption_s", "report_s", "write_s"} <= set(b.timings)
        else:
            assert type(a.error) is type(b.error) and str(a.error) == str(b.error)
    assert sorted(p.name for p in (tmp_path / "pool").iterdir()) == sorted(p.name for p in (tmp_path / "threads").iterdir())
    assert [o.ok for o in again] == [True, False]


def test_pool_needs_a_process(captioner):
    with pytest.raises(ValueError, match="processes"):
        CpuPool(captioner, processes=0)
