"""The watch folder as a user drops files into it: slowly, by rename, broken, nested, across a restart."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from tests.support.dicom import reissued
from tests.support.env import wait_for
from tests.support.privacy import PATIENT_ID, PATIENT_NAME, assert_no_patient_data
from tests.support.services import make_config

from medblip_dicom.apps.main import main
from medblip_dicom.integrations.spool import JobState, Spool
from medblip_dicom.integrations.ingest.watch import InboxWatcher


def watch_config(tmp_path: Path, **sections):
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    watch = {"inbox": str(inbox), "settle_s": 0.5, "poll_interval_s": 0.2}
    watch.update(sections.pop("watch", {}))
    output = {"dir": str(tmp_path / "out")}
    output.update(sections.pop("output", {}))
    return make_config(tmp_path, watch=watch, output=output, **sections)


def srs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.dcm")) if folder.is_dir() else []


def test_slow_writer_is_taken_only_when_complete(tmp_path, td, run_service):
    config = watch_config(tmp_path)
    service = run_service(config, watch=True)
    wait_for(service.watcher.ready.is_set, 10, "the watcher")
    data = Path(td("CT_small.dcm")).read_bytes()
    target = config.watch.inbox / "slow.dcm"
    chunks = [data[i:i + len(data) // 8 + 1] for i in range(0, len(data), len(data) // 8 + 1)]
    pauses = threading.Event()
    with open(target, "wb") as fh:
        for chunk in chunks:  # ~2 s in all, each pause shorter than the 0.5 s settle time
            fh.write(chunk)
            fh.flush()
            pauses.wait(0.25)
    wait_for(lambda: (config.watch.inbox / "done" / "slow.dcm").exists(), 30, "the input in done/")
    assert (config.watch.inbox / "done" / "slow.dcm").read_bytes() == data  # the whole file, not a part
    assert len(srs(config.output.dir)) == 1
    assert [j.state for j in service.spool.jobs()] == [JobState.DELIVERED]


@pytest.mark.parametrize("poll", [False, True], ids=["native", "polling"])
def test_renames_bad_files_nested_folders_and_ignored_names(tmp_path, td, run_service, caplog, poll):
    caplog.set_level(logging.DEBUG, logger="medblip_dicom")
    config = watch_config(tmp_path, watch={"poll": poll})
    inbox, out = config.watch.inbox, config.output.dir
    service = run_service(config, watch=True)
    wait_for(service.watcher.ready.is_set, 10, "the watcher")

    mr = reissued(td, "MR_small.dcm", tmp_path / "src", PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    ct = reissued(td, "CT_small.dcm", tmp_path / "src", PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    # write-then-rename: the temporary name is ignored, the final name is taken
    shutil.copy(ct, inbox / "ct.dcm.part")
    os.rename(inbox / "ct.dcm.part", inbox / "ct.dcm")
    # nested folders
    (inbox / "ward" / "bed 4").mkdir(parents=True)
    shutil.copy(mr, inbox / "ward" / "bed 4" / "mr.dcm")
    # bad inputs
    (inbox / "junk.dcm").write_bytes(os.urandom(3000))
    # another instance, cut short (a cut copy of ct itself would be a duplicate of its SOPInstanceUID)
    (inbox / "truncated.dcm").write_bytes(reissued(td, "CT_small.dcm", tmp_path / "cut").read_bytes()[:6000])
    (inbox / "empty.dcm").write_bytes(b"")
    shutil.copy(td("test-SR.dcm"), inbox / "report.dcm")  # not an image: skipped, never captioned
    # ignored names stay where they are
    (inbox / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (inbox / "upload.tmp").write_bytes(b"half a file")

    done, failed = inbox / "done", inbox / "failed"
    expected = [done / "ct.dcm", done / "ward" / "bed 4" / "mr.dcm", done / "report.dcm",
                failed / "junk.dcm", failed / "truncated.dcm", failed / "empty.dcm"]
    wait_for(lambda: all(p.exists() for p in expected) and service.spool.summary().queue_depth == 0, 60,
             "every input in done/ or failed/")

    assert len(srs(out)) == 2
    captioned = {str(pydicom.dcmread(p).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                     .ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for p in srs(out)}
    assert captioned == {str(pydicom.dcmread(ct).SOPInstanceUID), str(pydicom.dcmread(mr).SOPInstanceUID)}
    reasons = {name: (failed / f"{name}.reason.txt").read_text() for name in ("junk.dcm", "truncated.dcm", "empty.dcm")}
    assert "error: NotDicomError" in reasons["junk.dcm"]
    assert "error: InvalidDicomError" in reasons["truncated.dcm"] and "truncated" in reasons["truncated.dcm"]
    assert "error: NotDicomError" in reasons["empty.dcm"] and "empty" in reasons["empty.dcm"]
    skipped = (done / "report.dcm.reason.txt").read_text()
    assert "state: skipped" in skipped and "NotAnImageError" in skipped
    assert not (done / "ct.dcm.reason.txt").exists()
    assert (inbox / ".DS_Store").exists() and (inbox / "upload.tmp").exists()
    assert not (inbox / "ward").exists()  # emptied nested folders are tidied away
    assert len(service.spool.jobs()) == 6  # the .part name was never taken
    for text in [*reasons.values(), skipped]:
        assert "inputs/" not in text  # the reason names the job, not the spool's internal file
    for text in [*reasons.values(), skipped, caplog.text]:
        assert_no_patient_data(text)


def test_restart_with_jobs_pending_finishes_them(tmp_path, td, run_service):
    """Jobs left received, and one left processing by a process that was killed, all end delivered."""
    config = watch_config(tmp_path)
    inbox = config.watch.inbox
    for name in ("CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm"):
        shutil.copy(reissued(td, name, tmp_path / "src"), inbox / name)
    # First life: files taken into the spool, nothing captioned yet.
    with Spool(config.spool.dir, min_free_bytes=0) as spool:
        assert InboxWatcher(spool, config.watch).take_all() == 3
        assert spool.count(JobState.RECEIVED) == 3
    assert list(p for p in inbox.iterdir() if p.is_file()) == []
    # A second process claims a job and dies without a word (SIGKILL), mid-"processing".
    code = ("import os, signal, sys; from medblip_dicom.integrations.spool import Spool; "
            "s = Spool(sys.argv[1], min_free_bytes=0); s.select([j.id for j in s.jobs('received')]); s.claim(1); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(config.spool.dir)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Spool(config.spool.dir, min_free_bytes=0) as spool:
        assert spool.count(JobState.PROCESSING) == 1
    # Restart: the service recovers the orphaned claim and finishes everything.
    service = run_service(config, watch=True)
    wait_for(lambda: service.spool.count(JobState.DELIVERED) == 3, 60, "all three delivered")
    assert len(srs(config.output.dir)) == 3
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm"]


def test_full_spool_leaves_files_in_the_inbox_until_there_is_room(tmp_path, td):
    config = watch_config(tmp_path)
    shutil.copy(td("CT_small.dcm"), config.watch.inbox / "ct.dcm")
    with Spool(config.spool.dir, max_bytes=1000, min_free_bytes=0) as spool:
        watcher = InboxWatcher(spool, config.watch)
        assert watcher.take_all() == 0
        assert (config.watch.inbox / "ct.dcm").exists() and spool.jobs() == []
        spool.max_bytes = 0  # room again
        assert watcher.take_all() == 1
        assert not (config.watch.inbox / "ct.dcm").exists()


def test_watch_once_and_status_commands(tmp_path, td, tiny_model_dir, capsys):
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    inbox.mkdir()
    shutil.copy(td("CT_small.dcm"), inbox / "ct.dcm")
    shutil.copy(td("RG1_J2KR.dcm"), inbox / "cr.dcm")
    (inbox / "notes.dcm").write_text("not dicom")
    rc = main(["watch", str(inbox), "--model", str(tiny_model_dir), "--out", str(out), "--spool", str(spool),
               "--once", "--device", "cpu", "-q"])
    _, err = capsys.readouterr()
    assert rc == 1, err  # one input failed
    assert "took 3 file(s): 2 delivered, 0 skipped, 1 failed, 0 still waiting" in err
    assert len(srs(out)) == 2
    assert (inbox / "failed" / "notes.dcm.reason.txt").exists()

    assert main(["status", "--spool", str(spool)]) == 0
    text, _ = capsys.readouterr()
    assert "queue depth    0" in text
    assert "done           2  (delivered 2, skipped 0)" in text
    assert "failed         1" in text
    assert "oldest pending none" in text

    # Something waiting: a received job shows up as queue depth and oldest pending.
    with Spool(spool, min_free_bytes=0) as s:
        s.add_file(reissued(td, "MR_small.dcm", tmp_path / "src"), origin="test", name="mr.dcm")
    assert main(["status", "--spool", str(spool), "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr()[0])
    assert data["queue_depth"] == 1 and data["states"]["received"] == 1
    assert data["oldest_pending"]["job"] == 4 and data["oldest_pending"]["state"] == "received"

    assert main(["status", "--spool", str(tmp_path / "nowhere")]) == 2
    assert "not a spool folder" in capsys.readouterr()[1]


def test_subcommand_help_has_examples(capsys):
    for command in ("watch", "node", "status"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr()[0]
        assert "examples:" in text and f"medblip {command} " in text.split("examples:")[1]


def test_config_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nae_title = "THIS TITLE IS FAR TOO LONG"\n')
    assert main(["node", "--config", str(bad), "--model", "m", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr()[1]
    assert "[node] ae_title" in err and len(err.strip().splitlines()) == 1
    assert main(["node", "--model", "m", "--port", "11112"]) == 2  # no sink: neither --out nor --forward
    assert "reports need somewhere to go" in capsys.readouterr()[1]
