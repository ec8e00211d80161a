"""Attacks on the watch folder: links out of the inbox, FIFOs, and writers that pause or rewrite.

Rules under test: the watcher never follows a symbolic link (in the name or in any folder above
it), never opens anything but a regular file that lives in the inbox under one name, says in a
reason file why it refused an entry, and never takes, moves or removes an input that is still
being written or that changed while it was read.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pydicom
import pytest
from tests.support.dicom import reissued
from tests.support.env import wait_for
from tests.support.journal import journal_rows
from tests.support.privacy import PATIENT_ID, PATIENT_NAME
from tests.support.services import make_config, service_config

from medblip_dicom.integrations.spool import JobState, Spool
from medblip_dicom.integrations.ingest.watch import InboxWatcher

#: Settle time of the slow-writer test and the writer's pause: the pause is longer than the settle time.
SETTLE_S = 2.0
PAUSE_S = 2.5


def secret_file(folder: Path) -> tuple[Path, bytes]:
    """A private text file outside the inbox, with bytes no other file can contain."""
    folder.mkdir(parents=True, exist_ok=True)
    secret = f"root:x:0:0:secret-{uuid.uuid4().hex}:/root:/bin/bash\n".encode()
    path = folder / "passwd"
    path.write_bytes(secret)
    return path, secret


def regular_files(*folders: Path) -> list[Path]:
    """Every regular file under `folders`, found without following a single link."""
    found = []
    for folder in folders:
        for root, dirs, files in os.walk(folder):  # os.walk never descends a linked folder
            for name in dirs + files:
                path = Path(root) / name
                if path.is_file() and not path.is_symlink():
                    found.append(path)
    return found


def files_containing(needle: bytes, *folders: Path) -> list[Path]:
    return [p for p in regular_files(*folders) if needle in p.read_bytes()]


def reason(failed: Path, rel: str) -> str:
    path = failed / f"{rel}.reason.txt"
    assert path.is_file(), f"no reason file for {rel} in {failed}: {sorted(map(str, regular_files(failed)))}"
    return path.read_text()


def captioned_uids(out: Path) -> set[str]:
    uids = set()
    for sr in sorted(out.glob("*.dcm")) if out.is_dir() else []:
        ev = pydicom.dcmread(sr).CurrentRequestedProcedureEvidenceSequence[0]
        uids.add(str(ev.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
    return uids


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def unit_watcher(tmp_path: Path, spool: Spool, **watch) -> InboxWatcher:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    config = make_config(tmp_path, watch={"inbox": str(inbox), "settle_s": 0.5, **watch},
                         output={"dir": str(tmp_path / "out")})
    return InboxWatcher(spool, config.watch)


# -- links out of the inbox, against the real service -----------------------------------------------

def test_links_dropped_into_a_running_watch_folder_are_refused_and_never_followed(tmp_path, td, tiny_model_dir,
                                                                                    services):
    outside = tmp_path / "elsewhere"
    secret_path, secret = secret_file(outside)
    other_patient = reissued(td, "CT_small.dcm", outside / "pacs", PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    other_uid = uid_of(other_patient)
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    inbox.mkdir()
    service = services("watch", service_config(tmp_path, tiny_model_dir, watch={"inbox": inbox, "settle_s": 0.5},
                                               output={"dir": out}))
    service.start()
    service.wait_ready("watching ")

    os.symlink(secret_path, inbox / "x.dcm")
    os.symlink(other_patient, inbox / "other.dcm")
    (inbox / "ward").mkdir()
    os.symlink(secret_path, inbox / "ward" / "leak.dcm")
    good = reissued(td, "MR_small.dcm", tmp_path / "src")
    shutil.copy(good, inbox / "good.dcm")
    links = [inbox / "x.dcm", inbox / "other.dcm", inbox / "ward" / "leak.dcm"]
    wait_for(lambda: (inbox / "done" / "good.dcm").exists() and not any(p.is_symlink() for p in links), 90,
             "the good file done and every link gone from where it was dropped")
    wait_for(lambda: not [r for r in journal_rows(spool, "state") if r["state"] not in ("delivered", "failed",
                                                                                        "skipped")],
             60, "nothing pending")
    assert service.stop() == 0

    leaked = files_containing(secret, inbox, out, spool) + ([service.log] if secret in service.log.read_bytes() else [])
    assert not leaked, f"the secret outside the inbox was copied to {leaked}"
    assert secret_path.read_bytes() == secret and uid_of(other_patient) == other_uid  # targets untouched
    assert captioned_uids(out) == {uid_of(good)}  # the other patient's image was never captioned
    assert other_uid not in {r["sop_instance_uid"] for r in journal_rows(spool, "sop_instance_uid")}
    failed = inbox / "failed"
    for rel in ("x.dcm", "other.dcm", "ward/leak.dcm"):
        assert (failed / rel).is_symlink(), f"the link {rel} itself is kept in failed/ (as a link, not a copy)"
        text = reason(failed, rel)
        assert "symbolic link" in text and "not followed" in text, text
        assert str(outside) not in text  # the reason does not spell out where the link pointed
    assert PATIENT_NAME not in service.log_text() and PATIENT_ID not in service.log_text()


def test_links_present_at_start_and_linked_folders_are_refused(tmp_path, td, tiny_model_dir, services):
    outside = tmp_path / "elsewhere"
    secret_path, secret = secret_file(outside)
    other_patient = reissued(td, "CT_small.dcm", outside / "pacs")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    (inbox / "nested").mkdir(parents=True)
    os.symlink(secret_path, inbox / "nested" / "passwd.dcm")
    os.symlink(outside / "pacs", inbox / "pacs")  # a linked folder: never descended
    shutil.copy(reissued(td, "MR_small.dcm", tmp_path / "src"), inbox / "good.dcm")
    service = services("watch", service_config(tmp_path, tiny_model_dir, watch={"inbox": inbox, "settle_s": 0.5},
                                               output={"dir": out}))
    service.start()
    service.wait_ready("watching ")
    failed = inbox / "failed"
    wait_for(lambda: (inbox / "done" / "good.dcm").exists() and (failed / "pacs.reason.txt").exists()
             and (failed / "nested" / "passwd.dcm.reason.txt").exists(), 90,
             "the good file done and both links refused with a reason")
    assert service.stop() == 0

    assert not files_containing(secret, inbox, out, tmp_path / "spool")
    assert uid_of(other_patient) not in captioned_uids(out) and len(captioned_uids(out)) == 1
    assert (failed / "pacs").is_symlink() and (outside / "pacs" / other_patient.name).is_file()
    assert "symbolic link" in reason(failed, "pacs") and "not followed" in reason(failed, "pacs")
    assert "symbolic link" in reason(failed, "nested/passwd.dcm")


# -- the opener, one attack at a time (no model) --------------------------------------------------------

def test_a_file_under_a_linked_folder_is_not_opened(tmp_path, td):
    other_patient = reissued(td, "CT_small.dcm", tmp_path / "elsewhere")
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        watcher = unit_watcher(tmp_path, spool)
        os.symlink(other_patient.parent, watcher.inbox / "ward")
        watcher.take(watcher.inbox / "ward" / other_patient.name)  # as if an observer had reported it
        assert spool.jobs() == []
    assert other_patient.is_file() and (watcher.failed_dir / "ward").is_symlink()
    assert "symbolic link" in reason(watcher.failed_dir, "ward")


def test_a_link_swapped_in_between_the_check_and_the_open_is_refused(tmp_path, monkeypatch):
    secret_path, secret = secret_file(tmp_path / "elsewhere")
    real_open = os.open
    swapped = []

    def open_after_swap(path, flags, mode=0o777, *, dir_fd=None):  # noqa: ANN001, ANN202 - os.open's signature
        if os.fsdecode(path).endswith("x.dcm") and not swapped:  # the attacker wins the race, every time
            target = watcher.inbox / "x.dcm"
            target.unlink()
            os.symlink(secret_path, target)
            swapped.append(target)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        watcher = unit_watcher(tmp_path, spool)
        (watcher.inbox / "x.dcm").write_bytes(b"an innocent file")
        monkeypatch.setattr(os, "open", open_after_swap)
        watcher.take(watcher.inbox / "x.dcm")
        monkeypatch.undo()
        assert swapped and spool.jobs() == []
    assert not files_containing(secret, watcher.inbox, tmp_path / "spool")
    assert (watcher.failed_dir / "x.dcm").is_symlink() and "symbolic link" in reason(watcher.failed_dir, "x.dcm")


def test_a_fifo_never_blocks_the_watcher(tmp_path):
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        watcher = unit_watcher(tmp_path, spool)
        fifo = watcher.inbox / "pipe.dcm"
        os.mkfifo(fifo)
        taker = threading.Thread(target=watcher.take, args=(fifo,), name="take-fifo", daemon=True)
        taker.start()
        taker.join(10)
        blocked = taker.is_alive()
        if blocked:  # unblock the reader so the test ends: a writer opens and closes the FIFO
            with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
                pass
            taker.join(10)
        assert not blocked, "opening a FIFO in the inbox blocked the watcher"
        assert spool.jobs() == []
    assert "not a regular file" in reason(watcher.failed_dir, "pipe.dcm")


def test_a_hard_link_to_a_file_outside_the_inbox_is_refused(tmp_path, td):
    other_patient = reissued(td, "CT_small.dcm", tmp_path / "elsewhere")
    content = other_patient.read_bytes()
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        watcher = unit_watcher(tmp_path, spool)
        os.link(other_patient, watcher.inbox / "linked.dcm")
        watcher.take_all()
        assert spool.jobs() == []
    assert other_patient.read_bytes() == content and os.stat(other_patient).st_nlink == 1
    assert not (watcher.inbox / "linked.dcm").exists() and not (watcher.failed_dir / "linked.dcm").exists()
    assert not files_containing(content[-4096:], watcher.inbox, tmp_path / "spool")
    assert "hard link" in reason(watcher.failed_dir, "linked.dcm")


def test_a_fifo_in_a_running_watch_folder_is_refused_and_the_watcher_goes_on(tmp_path, td, run_service):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = make_config(tmp_path, watch={"inbox": str(inbox), "settle_s": 0.5}, output={"dir": str(tmp_path / "out")})
    service = run_service(config, watch=True)
    wait_for(service.watcher.ready.is_set, 30, "the watcher")
    os.mkfifo(inbox / "pipe.dcm")
    good = reissued(td, "CT_small.dcm", tmp_path / "src")
    shutil.copy(good, inbox / "good.dcm")
    wait_for(lambda: (inbox / "done" / "good.dcm").exists() and (inbox / "failed" / "pipe.dcm.reason.txt").exists(),
             60, "the good file done and the FIFO refused")
    assert "not a regular file" in reason(inbox / "failed", "pipe.dcm")
    assert captioned_uids(tmp_path / "out") == {uid_of(good)}


# -- writers that pause or rewrite -------------------------------------------------------------------

@pytest.mark.parametrize("pause_at", [0.0, 0.5], ids=["before-the-first-byte", "half-way"])
def test_a_writer_pausing_longer_than_settle_s_loses_nothing(tmp_path, td, run_service, pause_at):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    config = make_config(tmp_path, watch={"inbox": str(inbox), "settle_s": SETTLE_S, "poll_interval_s": 0.2},
                         output={"dir": str(out)})
    service = run_service(config, watch=True)
    wait_for(service.watcher.ready.is_set, 30, "the watcher")
    source = reissued(td, "CT_small.dcm", tmp_path / "src")
    data = source.read_bytes()
    cut = int(len(data) * pause_at)
    pause = threading.Event()
    started = time.monotonic()
    with open(inbox / "slow.dcm", "wb", buffering=0) as fh:  # one open file, kept open through the pause
        fh.write(data[:cut])
        pause.wait(PAUSE_S)
        fh.write(data[cut:])
    wait_for(lambda: (inbox / "done" / "slow.dcm").exists(), 60, "the slow file in done/")
    assert time.monotonic() - started < 60 + PAUSE_S
    assert (inbox / "done" / "slow.dcm").read_bytes() == data  # the whole file, taken once it was complete
    assert captioned_uids(out) == {uid_of(source)} and len(list(out.glob("*.dcm"))) == 1
    assert [j.state for j in service.spool.jobs()] == [JobState.DELIVERED]
    assert not (inbox / "failed").exists() or regular_files(inbox / "failed") == []
    # The audit trail read the file that was taken (from its open descriptor): one transfer, its study.
    audit = [ET.fromstring(line) for line in (Path(config.spool.dir) / "audit.xml").read_text().splitlines()]
    received = [m for m in audit if m.find("EventIdentification/EventID").get("csd_code") == "110104"
                and m.find("EventIdentification").get("EventActionCode") == "C"]
    assert len(received) == 1
    objects = {o.get("ParticipantObjectTypeCode"): o.get("ParticipantObjectID")
               for o in received[0].findall("ParticipantObjectIdentification")}
    assert objects["2"] == str(pydicom.dcmread(source).StudyInstanceUID)


@pytest.mark.parametrize("how", ["in-place", "by-rename"])
def test_a_file_rewritten_while_it_is_read_is_left_to_be_taken_again(tmp_path, td, monkeypatch, how):
    from medblip_dicom.integrations.spool import spool as spool_module

    first, second = reissued(td, "CT_small.dcm", tmp_path / "src"), reissued(td, "MR_small.dcm", tmp_path / "src")
    real_info = spool_module.read_instance_info
    rewrites = []

    def rewrite_while_reading(path):  # noqa: ANN001, ANN202 - runs after the copy, before the admission
        if not rewrites:
            target = watcher.inbox / "scan.dcm"
            if how == "in-place":
                with open(target, "r+b") as fh:
                    fh.truncate(0)
                    fh.write(second.read_bytes())
            else:
                shutil.copy(second, watcher.inbox / "scan.dcm.part")
                os.replace(watcher.inbox / "scan.dcm.part", target)
            rewrites.append(target)
        return real_info(path)

    monkeypatch.setattr(spool_module, "read_instance_info", rewrite_while_reading)
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        watcher = unit_watcher(tmp_path, spool)
        shutil.copy(first, watcher.inbox / "scan.dcm")
        watcher.take(watcher.inbox / "scan.dcm")
        assert rewrites
        assert (watcher.inbox / "scan.dcm").read_bytes() == second.read_bytes(), "the rewritten file was lost"
        watcher.take(watcher.inbox / "scan.dcm")  # taken again, now that it holds still
        assert not (watcher.inbox / "scan.dcm").exists()
        assert [j.sop_instance_uid for j in spool.jobs() if j.state is not JobState.FAILED] == [uid_of(second)]


@pytest.mark.parametrize("folder", ["done", "failed"])
def test_a_link_planted_as_the_done_or_failed_folder_stops_the_watcher_from_starting(tmp_path, folder):
    from medblip_dicom.integrations.config.checks import ConfigError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "inbox").mkdir()
    os.symlink(elsewhere, tmp_path / "inbox" / folder)  # every finished input would be moved there
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        with pytest.raises(ConfigError, match=rf"\[watch\] {folder}_dir: .*symbolic link"):
            unit_watcher(tmp_path, spool)
    assert list(elsewhere.iterdir()) == []
