"""Group commit: concurrent arrivals share the folder fsync and the journal commit, and a shared
commit is acknowledged to none of them before it is durable (integrations/spool/admit.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medblip_dicom.integrations.spool import JobState, Spool
from medblip_dicom.integrations.spool import admit
from medblip_dicom.integrations.spool.admit import GroupCommit


def _instances(n: int) -> list[tuple[str, bytes]]:
    import io

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = []
    for _ in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((str(ds.SOPInstanceUID), buf.getvalue()))
    return out


def _add_concurrently(spool: Spool, instances: list[tuple[str, bytes]]) -> tuple[dict[str, object], dict[str, BaseException]]:
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}
    start = threading.Barrier(len(instances))

    def send(uid: str, data: bytes) -> None:
        start.wait()
        try:
            results[uid] = spool.add_bytes(data, origin="node", name=f"{uid}.dcm")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors[uid] = exc

    threads = [threading.Thread(target=send, args=item) for item in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def test_concurrent_arrivals_share_commits_and_every_one_is_journalled(tmp_path: Path, monkeypatch) -> None:
    real_fsync_dir = admit.fsync_dir

    def slow_fsync_dir(path) -> None:  # a disk whose flush takes 20 ms: arrivals queue behind it
        time.sleep(0.02)
        real_fsync_dir(path)

    monkeypatch.setattr(admit, "fsync_dir", slow_fsync_dir)
    instances = _instances(12)
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        results, errors = _add_concurrently(spool, instances)
        commits, items = spool.commit_stats
        jobs = {j.sop_instance_uid: j for j in spool.jobs()}
    assert not errors
    assert items == 12 and commits < 12, (commits, items)  # some arrivals shared a commit
    assert set(jobs) == {uid for uid, _ in instances}
    for uid, data in instances:
        job = jobs[uid]
        assert results[uid].job_id == job.id and job.state == JobState.RECEIVED
        assert (tmp_path / "spool" / job.input_file).read_bytes() == data


def test_a_failed_shared_commit_is_acknowledged_to_none_and_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    instances = _instances(6)
    real_commit = admit.commit_arrivals
    failing = threading.Event()
    failing.set()
    entered = threading.Event()

    def commit_or_fail(root, journal, arrivals):
        if failing.is_set():  # the first commit fails; the ones after it succeed
            failing.clear()
            entered.set()
            time.sleep(0.05)  # the others queue up behind this commit and the next
            real_write = journal.write

            def broken_write():
                raise sqlite3.OperationalError("disk I/O error")

            monkeypatch.setattr(journal, "write", broken_write)
            try:
                return real_commit(root, journal, arrivals)
            finally:
                monkeypatch.setattr(journal, "write", real_write)
        return real_commit(root, journal, arrivals)

    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        monkeypatch.setattr(spool._commits, "_flush", lambda arrivals: commit_or_fail(spool.root, spool.journal, arrivals))
        results, errors = _add_concurrently(spool, instances)
        assert entered.is_set()
        assert set(results) | set(errors) == {uid for uid, _ in instances}
        assert errors and all(isinstance(e, sqlite3.OperationalError) for e in errors.values())
        # Nothing that raised is in the journal or in inputs/; everything that returned is both.
        jobs = {j.sop_instance_uid: j for j in spool.jobs()}
        assert set(jobs) == set(results)
        on_disk = sorted(p.name for p in (tmp_path / "spool" / "inputs").iterdir())
        assert on_disk == sorted(Path(j.input_file).name for j in jobs.values())
        assert not list((tmp_path / "spool" / "tmp").iterdir())
        uid, data = _instances(1)[0]
        assert spool.add_bytes(data, origin="node", name="again.dcm").state == JobState.RECEIVED


def test_group_commit_batches_behind_a_running_commit_and_keeps_errors_to_their_batch() -> None:
    gate = threading.Event()
    batches: list[list[int]] = []

    def flush(items: list[int]) -> list[int]:
        if not batches:
            gate.wait(5)  # the first commit is slow: everything else arrives meanwhile
        batches.append(list(items))
        if -1 in items:
            raise ValueError("bad batch")
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(flush)
    out: dict[int, object] = {}

    def submit(i: int) -> None:
        try:
            out[i] = commit.submit(i)
        except ValueError as exc:
            out[i] = exc

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    time.sleep(0.1)
    others = [threading.Thread(target=submit, args=(i,)) for i in (1, 2, 3, -1)]
    for t in others:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert batches[0] == [0] and sorted(batches[1]) == [-1, 1, 2, 3] and len(batches) == 2
    assert out[0] == 0
    assert all(isinstance(out[i], ValueError) for i in (1, 2, 3, -1))  # one failed commit: none acknowledged
    assert commit.submit(4) == 40 and (commit.commits, commit.items) == (2, 2)


def test_one_sender_alone_commits_at_once(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        for uid, data in _instances(3):
            spool.add_bytes(data, origin="node", name=f"{uid}.dcm")
        assert spool.commit_stats == (3, 3)
