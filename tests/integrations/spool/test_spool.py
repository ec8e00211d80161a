"""The spool and its journal: states, duplicates, limits, recovery after a crash."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from medblip_dicom.dicomfile import content_offset
from medblip_dicom.integrations.spool import JobState, Spool, SpoolFullError
from medblip_dicom.integrations.spool.files import safe_relative_name
from tests.support.dicom import reissued


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool", min_free_bytes=0) as s:
        yield s


def test_journal_is_sqlite_in_wal_mode(spool):
    db = sqlite3.connect(spool.root / "journal.sqlite")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_lifecycle_received_processing_reported_delivered(spool, td, tmp_path):
    ct = td("CT_small.dcm")
    admission = spool.add_file(ct, origin="test", name="ct.dcm", done_dir=tmp_path / "done")
    job = spool.job(admission.job_id)
    assert job.state is JobState.RECEIVED
    assert job.sop_instance_uid == str(pydicom.dcmread(ct).SOPInstanceUID)
    assert job.study_instance_uid == str(pydicom.dcmread(ct).StudyInstanceUID)
    assert spool.input_path(job).read_bytes() == Path(ct).read_bytes()
    assert spool.pending_bytes() == os.path.getsize(ct)

    assert spool.claim(10) == []  # held until selection lets it through
    spool.select([admission.job_id])
    (claimed,) = spool.claim(10)
    assert claimed.state is JobState.PROCESSING and claimed.owner == spool.owner
    report = spool.report_dir(claimed.id) / "sr.dcm"
    report.parent.mkdir(parents=True)
    report.write_bytes(b"report")
    spool.mark_reported(claimed.id, [report], "2.25.1")
    (group,) = spool.claim_for_delivery()
    assert [j.id for j in group] == [claimed.id]
    final = spool.finish(claimed.id, JobState.DELIVERED)
    assert final.state is JobState.DELIVERED and final.disposed
    assert (tmp_path / "done" / "ct.dcm").read_bytes() == Path(ct).read_bytes()
    assert not spool.input_path(job).exists() and not spool.report_dir(job.id).exists()
    assert spool.pending_bytes() == 0


def test_same_instance_twice_is_a_duplicate_other_content_is_not(spool, td, tmp_path):
    ct = Path(td("CT_small.dcm"))
    first = spool.add_file(ct, origin="watch", name="a.dcm")
    again = spool.add_bytes(ct.read_bytes(), origin="node", name="b.dcm")
    assert again.duplicate_of == first.job_id and spool.job(again.job_id).state is JobState.SKIPPED
    # Same data set, different file meta (another sender's implementation UID): still a duplicate.
    ds = pydicom.dcmread(ct)
    ds.file_meta.ImplementationVersionName = "OTHER_SENDER"
    other_meta = tmp_path / "other-meta.dcm"
    ds.save_as(other_meta, enforce_file_format=True)
    assert content_offset(other_meta.read_bytes()) != content_offset(ct.read_bytes())
    assert spool.add_file(other_meta, origin="watch", name="c.dcm").duplicate_of == first.job_id
    # Same SOPInstanceUID, changed content: one UID, one report; skipped, naming the first job.
    ds.SeriesDescription = "corrected"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)
    other = spool.add_file(changed, origin="watch", name="d.dcm")
    assert other.duplicate_of == first.job_id and spool.job(other.job_id).state is JobState.SKIPPED
    assert spool.job(other.job_id).reason == f"SOPInstanceUID already seen in job {first.job_id} with different " \
        "content; not captioned"
    # A re-send of an instance whose job failed is worked again.
    spool.finish(first.job_id, JobState.FAILED, "Oops: test")
    assert not spool.add_file(ct, origin="watch", name="e.dcm").duplicate


def test_own_outputs_are_skipped_by_the_loop_guard(spool, td, tmp_path):
    ds = pydicom.dcmread(td("CT_small.dcm"))
    ds.Manufacturer = "medblip-dicom"
    path = tmp_path / "ours.dcm"
    ds.save_as(path)
    admission = spool.add_file(path, origin="node", name="ours.dcm")
    job = spool.job(admission.job_id)
    assert job.state is JobState.SKIPPED and "loop guard" in job.reason
    assert spool.claim(10) == []


def test_byte_limit_and_free_space_floor_refuse_new_work(tmp_path, td):
    ct = td("CT_small.dcm")
    size = os.path.getsize(ct)
    with Spool(tmp_path / "a", max_bytes=size + 10, min_free_bytes=0) as spool:
        spool.add_file(ct, origin="test", name="1.dcm")
        with pytest.raises(SpoolFullError, match="max_bytes"):
            spool.add_file(reissued(td, "CT_small.dcm", tmp_path / "src"), origin="test", name="2.dcm")
        assert len(spool.jobs()) == 1 and list((spool.root / "tmp").iterdir()) == []
        assert not spool.has_room(100)
    free = shutil.disk_usage(tmp_path).free
    with Spool(tmp_path / "b", min_free_bytes=free + 1) as spool:
        with pytest.raises(SpoolFullError, match="min_free_bytes"):
            spool.add_bytes(b"x" * 10, origin="test", name="x")
        assert spool.jobs() == []


#: A process that opens the spool given as argv[1], claims both jobs, says so and kills itself.
_CLAIM_THEN_DIE = ("import os, signal, sys; from medblip_dicom.integrations.spool import Spool; "
                   "s = Spool(sys.argv[1], min_free_bytes=0); s.select([j.id for j in s.jobs('received')]); "
                   "assert len(s.claim(5)) == 2; "
                   "print('claimed', flush=True); os.kill(os.getpid(), signal.SIGKILL)")


def _spool_with_two_jobs(root: Path, td) -> Spool:
    spool = Spool(root, min_free_bytes=0)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        spool.add_file(td(name), origin="test", name=name)
    return spool


def test_processing_jobs_of_a_killed_process_are_requeued(tmp_path, td):
    root = tmp_path / "spool"
    _spool_with_two_jobs(root, td).close()
    proc = subprocess.run([sys.executable, "-c", _CLAIM_THEN_DIE, str(root)], timeout=60, stdout=subprocess.DEVNULL)
    assert proc.returncode == -signal.SIGKILL
    with Spool(root, min_free_bytes=0) as spool:
        assert spool.count(JobState.PROCESSING) == 2
        assert spool.recover()["requeued"] == 2
        assert spool.count(JobState.RECEIVED) == 2
        assert all(j.owner is None for j in spool.jobs())


def test_claims_of_an_unreaped_killed_process_are_released_while_running(tmp_path, td):
    """A claimer killed but not yet reaped (a zombie: an orphaned worker whose new parent reaps
    late) is gone; a running service takes its jobs back without a restart."""
    from medblip_dicom.fileio import pid_alive

    root = tmp_path / "spool"
    with _spool_with_two_jobs(root, td) as spool:
        proc = subprocess.Popen([sys.executable, "-c", _CLAIM_THEN_DIE, str(root)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"claimed\n"
            deadline = time.monotonic() + 30
            while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.monotonic() < deadline, "the child did not die"
                time.sleep(0.02)
            assert not pid_alive(proc.pid)  # not reaped yet, and still counted as gone
            assert spool.count(JobState.PROCESSING) == 2
            spool.received_event.clear()
            assert spool.release_dead_claims() == 2
            assert spool.received_event.is_set()  # the worker is woken for them
            assert spool.count(JobState.RECEIVED) == 2
        finally:
            proc.wait(10)
            proc.stdout.close()
    assert pid_alive(os.getpid())


def test_claims_of_a_live_instance_are_not_stolen(tmp_path, td):
    with Spool(tmp_path / "spool", min_free_bytes=0) as first:
        first.select([first.add_file(td("CT_small.dcm"), origin="test", name="ct.dcm").job_id])
        assert len(first.claim(1)) == 1
        with Spool(tmp_path / "spool", min_free_bytes=0) as second:
            assert second.recover()["requeued"] == 0
            assert second.claim(1) == []
    # Closing hands the claim back.
    with Spool(tmp_path / "spool", min_free_bytes=0) as third:
        assert third.count(JobState.RECEIVED) == 1


def test_recovery_finishes_interrupted_moves_and_removes_orphans(tmp_path, td):
    root = tmp_path / "spool"
    with Spool(root, min_free_bytes=0) as spool:
        admission = spool.add_file(td("CT_small.dcm"), origin="watch", name="sub/ct.dcm",
                                   failed_dir=tmp_path / "failed")
        job = spool.job(admission.job_id)
        orphan = root / "inputs" / "orphan.dcm"
        orphan.write_bytes(b"never acknowledged")
        old = time.time() - 3600
        os.utime(orphan, (old, old))
    # A crash right after the journal said "failed" and before the input was moved:
    db = sqlite3.connect(root / "journal.sqlite")
    db.execute("UPDATE jobs SET state='failed', error_class='InvalidDicomError', reason='test', disposed=0 WHERE id=?",
               (job.id,))
    db.commit()
    db.close()
    with Spool(root, min_free_bytes=0) as spool:
        done = spool.recover()
        assert done["disposed"] == 1 and done["orphans"] == 1
        assert (tmp_path / "failed" / "sub" / "ct.dcm").exists()
        reason = (tmp_path / "failed" / "sub" / "ct.dcm.reason.txt").read_text()
        assert "error: InvalidDicomError" in reason and "message: test" in reason
        assert not orphan.exists()
        assert spool.job(job.id).disposed


def test_names_cannot_escape_their_folder():
    assert safe_relative_name("../../etc/passwd", "x") == "etc/passwd"
    assert safe_relative_name("/abs/path.dcm", "x") == "abs/path.dcm"
    assert safe_relative_name("..", "fallback.dcm") == "fallback.dcm"
    assert safe_relative_name("a\\..\\b.dcm", "x") == "a/b.dcm"


def test_summary_counts_and_oldest_pending(spool, td):
    a = spool.add_file(td("CT_small.dcm"), origin="test", name="a")
    spool.add_file(td("MR_small.dcm"), origin="test", name="b")
    spool.finish(a.job_id, JobState.FAILED, "NotDicomError: x")
    summary = spool.summary()
    assert summary.queue_depth == 1 and summary.failed == 1 and summary.done == 0
    assert summary.oldest_pending.name == "b"


def test_a_journal_of_the_first_version_is_read_and_migrated_without_losing_a_row(tmp_path):
    """Spools written before error classes and selection existed keep working: `status` reads them
    as they are, and opening one adds the new columns (held jobs are then decided by selection)."""
    import sqlite3

    from medblip_dicom.integrations.spool import open_readonly_summary
    from medblip_dicom.integrations.spool.rows import SCHEMA

    root = tmp_path / "old"
    root.mkdir()
    v1 = SCHEMA
    for column in ("    error_class TEXT,\n", "    facts TEXT,\n", "    selected INTEGER NOT NULL DEFAULT 0,\n",
                   "    representative INTEGER NOT NULL DEFAULT 0,\n", "    note TEXT\n"):
        v1 = v1.replace(column, "")
    v1 = v1.replace("final_path TEXT,\n);", "final_path TEXT\n);").replace(
        "CREATE INDEX IF NOT EXISTS jobs_by_series ON jobs(series_instance_uid);\n", "")
    db = sqlite3.connect(root / "journal.sqlite")
    db.executescript(v1)
    db.execute("INSERT INTO jobs (origin, name, input_file, state, content_sha256, size, reason, received_at, "
               "updated_at) VALUES ('node', 'a.dcm', 'inputs/a.dcm', 'failed', 'x', 1, 'InvalidDicomError: test', 1, 1)")
    db.commit()
    db.close()
    summary = open_readonly_summary(root)
    assert summary.counts["failed"] == 1 and summary.held == 0
    with Spool(root, min_free_bytes=0) as spool:
        (job,) = spool.jobs()
        assert job.reason == "InvalidDicomError: test" and job.error_class is None and not job.selected
