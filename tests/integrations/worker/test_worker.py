"""The worker: batches across jobs, skips non-images, fails with reasons, writes the optional picture."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from tests.support.dicom import reissued
from tests.support.env import wait_for

from medblip_dicom.integrations.spool import JobState, Spool
from medblip_dicom.report_view import CaptionReport
from medblip_dicom.integrations.worker.loop import Worker
from medblip_dicom.selection import SelectConfig

#: One report per instance: these tests are about batching and outcomes, not about series.
EACH = SelectConfig(per_series="each")


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool", min_free_bytes=0) as s:
        yield s


@pytest.fixture
def running():
    """Run workers in threads; stop and join them in teardown."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(worker: Worker) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"poll_s": 0.05}, daemon=True)
        thread.start()
        started.append((stop, thread))

    yield start
    for stop, thread in started:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()


def test_batches_fill_up_to_the_size_and_a_lone_job_waits_at_most_max_wait(spool, captioner, td, tmp_path,
                                                                            running):
    worker = Worker(spool, captioner, batch_size=3, max_wait_s=0.6, prepare_workers=1, select=EACH)
    for i in range(7):
        spool.add_file(reissued(td, "CT_small.dcm", tmp_path / "src"), origin="test", name=f"{i}.dcm")
    running(worker)
    wait_for(lambda: spool.count(JobState.REPORTED) == 7, 60, "seven reports")
    assert list(worker.batch_sizes) == [3, 3, 1]

    lone = spool.add_file(reissued(td, "MR_small.dcm", tmp_path / "src"), origin="test", name="lone.dcm")
    wait_for(lambda: spool.job(lone.job_id).state is JobState.REPORTED, 30, "the lone report")
    job = spool.job(lone.job_id)
    waited = job.reported_at - job.received_at
    assert waited >= 0.6  # held for more work up to max_wait_s ...
    assert waited < 10  # ... and then captioned alone
    assert list(worker.batch_sizes)[-1] == 1


def test_outcomes_reported_skipped_failed(spool, captioner, td, tmp_path):
    worker = Worker(spool, captioner, batch_size=8, prepare_workers=0, select=EACH)
    good = spool.add_file(td("CT_small.dcm"), origin="test", name="ct.dcm")
    sr = spool.add_file(td("test-SR.dcm"), origin="test", name="sr.dcm")
    trunc = tmp_path / "trunc.dcm"
    trunc.write_bytes(Path(td("MR_small.dcm")).read_bytes()[:4000])
    bad = spool.add_file(trunc, origin="test", name="trunc.dcm", failed_dir=tmp_path / "failed")
    assert worker.process_available() == 3
    assert list(worker.batch_sizes) == [3]  # one model call for the batch
    assert spool.job(good.job_id).state is JobState.REPORTED
    report = spool.root / spool.job(good.job_id).reports[0]
    assert pydicom.dcmread(report).SOPInstanceUID == spool.job(good.job_id).sr_sop_instance_uid
    skipped = spool.job(sr.job_id)
    assert skipped.state is JobState.SKIPPED and skipped.error_class == "NotAnImageError"
    assert skipped.error.startswith("NotAnImageError: ") and str(spool.root) not in skipped.reason
    failed = spool.job(bad.job_id)
    assert failed.state is JobState.FAILED and failed.error_class == "InvalidDicomError"
    assert "truncated" in failed.reason and not failed.reason.startswith(("job ", "InvalidDicomError"))
    text = (tmp_path / "failed" / "trunc.dcm.reason.txt").read_text()
    assert "error: InvalidDicomError" in text and f"job: {bad.job_id}" in text
    assert str(spool.root) not in text


def test_a_batch_the_model_fails_is_retried_job_by_job(spool, captioner, td, tmp_path, monkeypatch):
    worker = Worker(spool, captioner, batch_size=4, prepare_workers=0, select=EACH)
    for i in range(3):
        spool.add_file(reissued(td, "CT_small.dcm", tmp_path / "src"), origin="test", name=f"{i}.dcm")
    real = captioner.generate
    calls: list[int] = []

    def flaky(pixel_values, settings=None):
        calls.append(len(pixel_values))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(pixel_values, settings)

    monkeypatch.setattr(captioner, "generate", flaky)
    worker.process_available()
    assert calls == [3, 1, 1, 1]
    assert spool.count(JobState.REPORTED) == 3


def test_model_that_keeps_failing_fails_the_job_after_a_few_attempts(spool, captioner, td, monkeypatch):
    worker = Worker(spool, captioner, batch_size=1, prepare_workers=0, select=EACH)
    admission = spool.add_file(td("CT_small.dcm"), origin="test", name="ct.dcm")

    def broken(pixel_values, settings=None):
        raise RuntimeError("device lost (simulated)")

    monkeypatch.setattr(captioner, "generate", broken)
    for _ in range(5):
        worker.process_available()
    job = spool.job(admission.job_id)
    assert job.state is JobState.FAILED and "device lost" in job.reason


def test_the_secondary_capture_is_valid_and_shows_the_image_with_its_caption(spool, captioner, td, tool):
    from tests.support.env import run_tool

    dciodvfy = tool("dciodvfy")
    worker = Worker(spool, captioner, batch_size=2, prepare_workers=0, secondary_capture=True, select=EACH)
    source = pydicom.dcmread(td("RG1_UNCI.dcm"))
    admission = spool.add_file(td("RG1_UNCI.dcm"), origin="test", name="cr.dcm")
    worker.process_available()
    job = spool.job(admission.job_id)
    assert job.state is JobState.REPORTED and len(job.reports) == 2
    sr = pydicom.dcmread(spool.root / job.reports[0])
    sc_path = spool.root / job.reports[1]
    sc = pydicom.dcmread(sc_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID not in (sr.SeriesInstanceUID, source.SeriesInstanceUID)
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    caption = CaptionReport.from_dataset(sr).caption
    assert caption in sc.ImageComments and "machine-generated" in sc.ImageComments
    pixels = sc.pixel_array
    assert pixels.shape[1] >= 512 and pixels.shape[2] == 3
    band = pixels[-40:]  # the caption band: mostly black with bright text
    assert (band.max(axis=2) == 0).mean() > 0.5 and band.max() > 200
    proc = run_tool([dciodvfy, str(sc_path)])
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    # Same source and model: the same Secondary Capture UID (idempotent, like the SR).
    spool.finish(job.id, JobState.DELIVERED)
    again = spool.add_file(reissued(td, "RG1_UNCI.dcm", spool.root.parent / "src"), origin="test", name="x")
    worker.process_available()
    other = pydicom.dcmread(spool.root / spool.job(again.job_id).reports[1])
    assert other.SOPInstanceUID != sc.SOPInstanceUID  # a different source instance ...
    assert other.SeriesInstanceUID == sc.SeriesInstanceUID  # ... of the same series: one SC series
    assert np.asarray(other.pixel_array).shape == pixels.shape
