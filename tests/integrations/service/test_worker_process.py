"""The worker in its own process: captions, reports a bad model at start, never outlives the
service, and a worker process that dies stops the service (nothing acknowledged is lost)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.dicom import reissued
from tests.support.env import wait_for
from tests.support.services import make_config

from medblip_dicom.integrations.config.file import ConfigError, config_from_dict
from medblip_dicom.integrations.service.assembly import Service
from medblip_dicom.integrations.spool import JobState, Spool
from medblip_dicom.integrations.service.worker_process import WorkerStartError


def _config(tmp_path: Path, model: Path | str, **extra: dict) -> object:
    return make_config(tmp_path, model={"path": str(model), "device": "cpu", "dtype": "float32", "num_beams": 1,
                                        "max_new_tokens": 8, "min_new_tokens": 2},
                       output={"dir": str(tmp_path / "out")}, watch={"inbox": str(tmp_path / "inbox"),
                                                                    "settle_s": 0.1, "rescan_interval_s": 0},
                       **extra)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_service_captions_in_a_separate_worker_process(tmp_path, tiny_model_dir, td):
    (tmp_path / "inbox").mkdir()
    service = Service(_config(tmp_path, tiny_model_dir), watch=True)
    assert service.separate_worker
    service.start()
    try:
        child = service.worker_process
        assert child is not None and child.pid not in (None, os.getpid()) and child.is_alive()
        assert service.worker is None  # no model in the service's own process
        reissued(td, "CT_small.dcm", tmp_path / "inbox")
        wait_for(lambda: any((tmp_path / "out").glob("*.dcm")) if (tmp_path / "out").exists() else False, 120,
                 "the SR in the output folder")
        jobs = service.spool.jobs()
        assert [j.state for j in jobs] == [JobState.DELIVERED]
    finally:
        service.stop()
    assert child.exitcode == 0  # asked to stop, it finished cleanly
    assert service.error is None


def test_a_model_that_cannot_load_fails_start_with_the_reason(tmp_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "empty-model").mkdir()
    service = Service(_config(tmp_path, tmp_path / "empty-model"), watch=True)
    with pytest.raises(WorkerStartError, match="empty-model"):
        service.start()
    child = service.worker_process
    assert child is not None and not child.is_alive()
    service.stop()  # idempotent after a failed start


def test_a_dying_worker_process_stops_the_service_and_its_jobs_are_resumed(tmp_path, tiny_model_dir, td):
    (tmp_path / "inbox").mkdir()
    config = _config(tmp_path, tiny_model_dir)
    service = Service(config, watch=True)
    service.start()
    try:
        os.kill(service.worker_process.pid, signal.SIGKILL)
        assert service.stopped.wait(10), "the service did not notice its worker process died"
        assert "exited with code -9" in str(service.error)
    finally:
        service.stop()
    # An instance accepted meanwhile is not lost: the next start captions it.
    with Spool(config.spool.dir, min_free_bytes=0) as spool:
        path = reissued(td, "CT_small.dcm", tmp_path / "staging")
        spool.add_file(path, origin="test", name=path.name)
    service = Service(config)
    service.start()
    try:
        wait_for(lambda: [j.state for j in service.spool.jobs()] == [JobState.DELIVERED], 120, "the job delivered")
    finally:
        service.stop()


def test_the_worker_process_does_not_outlive_a_killed_service(tmp_path, tiny_model_dir):
    """SIGKILL to the service alone (not its group): the orphaned worker stops by itself."""
    (tmp_path / "inbox").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medblip_dicom", "watch", str(tmp_path / "inbox"), "--model", str(tiny_model_dir),
         "--out", str(tmp_path / "out"), "--spool", str(tmp_path / "spool")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    worker_pid = None
    try:
        def child() -> int | None:
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:]
            for kids in Path(f"/proc/{proc.pid}/task").glob("*/children"):
                for pid in kids.read_text().split():
                    with contextlib.suppress(OSError):  # spawn's children: the worker, the resource tracker
                        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            return int(pid)
            return None

        worker_pid = wait_for(child, 60, "the worker process")
        wait_for(lambda: (tmp_path / "spool" / "journal.sqlite").exists(), 60, "the spool")
        time.sleep(1.0)
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not _process_alive(worker_pid), 20, "the orphaned worker process to stop")
    finally:
        for pid in (proc.pid, worker_pid):
            if pid is not None and _process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_a_loaded_captioner_or_the_setting_keeps_the_worker_in_process(tmp_path, captioner):
    config = _config(tmp_path, "unused")
    assert not Service(config, captioner=captioner).separate_worker
    off = _config(tmp_path, "unused", worker={"separate_process": False})
    assert not Service(off).separate_worker


@pytest.mark.parametrize("values, message", [
    ({"nice": 20}, r"\[worker\] nice: must be 0 to 19, got 20"),
    ({"nice": -1}, "nice"),
    ({"separate_process": "yes"}, r"\[worker\] separate_process: must be true or false"),
])
def test_worker_process_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": {"path": "m"}, "output": {"dir": "out"}, "worker": values})


def test_signals_to_the_worker_process_do_not_stop_it_the_service_does(tmp_path, tiny_model_dir):
    """systemd signals the whole control group, Ctrl-C the whole process group: the worker
    ignores that and stops when the service tells it, so a clean stop is not taken for a crash."""
    (tmp_path / "inbox").mkdir()
    service = Service(_config(tmp_path, tiny_model_dir), watch=True)
    service.start()
    try:
        child = service.worker_process
        for sig in (signal.SIGTERM, signal.SIGINT):
            os.kill(child.pid, sig)
        time.sleep(1.5)  # three rounds of the service's watch
        assert child.is_alive() and not service.stopped.is_set()
    finally:
        service.stop()
    assert child.exitcode == 0 and service.error is None


def test_a_stop_during_model_loading_ends_the_start_at_once(tmp_path, tiny_model_dir):
    import threading

    (tmp_path / "inbox").mkdir()
    service = Service(_config(tmp_path, tiny_model_dir), watch=True)
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    service.start(cancel=cancel)
    try:
        assert time.monotonic() - started < 10
        assert service.stopped.is_set() and service.watcher is not None
        assert not service.worker_process.is_alive()
    finally:
        service.stop()
    assert service.error is None


def test_jobs_of_a_crashed_worker_process_count_attempts_then_fail(tmp_path, td):
    """A job whose captioning kills the worker process must not take the service down forever."""
    root = tmp_path / "spool"
    with Spool(root, min_free_bytes=0) as spool:
        path = reissued(td, "CT_small.dcm", tmp_path / "staging")
        job = spool.add_file(path, origin="node", name=path.name).job_id

        def held_by_dead_worker() -> None:
            with spool.journal.write() as db:  # as a worker process (pid 999999999, gone) would hold it
                db.execute("UPDATE jobs SET state='processing', owner='999999999:abcdefabcdef' WHERE id=?", (job,))

        held_by_dead_worker()
        assert spool.release_process(999999999, max_attempts=2, error_class="Died", reason="died").failed == []
        first = spool.job(job)
        assert (first.state, first.attempts, first.owner) == (JobState.RECEIVED, 1, None)
        held_by_dead_worker()
        assert spool.release_process(999999999, max_attempts=2, error_class="Died", reason="the worker died").failed == [job]
        last = spool.job(job)
        assert (last.state, last.error_class, last.reason) == (JobState.FAILED, "Died", "the worker died")
        assert len(list((root / "failed").glob("*.reason.txt"))) == 1  # the input is kept, with its reason
