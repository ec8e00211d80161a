"""Crash: SIGKILL the service at chosen moments with traffic flowing, restart it, and at the end
prove that nothing was lost or reported twice.

Each round starts the service, gives it new traffic, waits for one moment -- while receiving
(an association mid-way), mid-batch (jobs in ``processing``), while SRs are being written (an SR
in the spool for a job not yet marked reported, or its temporary file), while forwarding (reports
claimed by the delivery loop), while inputs are moved to ``done/`` (watch folder), or a random
instant -- and kills the whole process group with SIGKILL. What the kill left behind is recorded
(and ``medblip status`` must still read the crashed spool). After the last round the service runs
until everything is finished; then every instance that got a C-STORE success (or was dropped into
the inbox) has exactly one SR, in the output folder and in Orthanc, and no partial or temporary
file is visible in the output folder.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checks import check_exactly_one_sr_each, check_output_folder, validate_srs
from tests.support.env import wait_for
from tests.support.figures import mib, scaled, seed
from tests.support.inputs import drop_into, make_good_files
from tests.support.journal import journal_rows, pending
from tests.support.privacy import scan_for_patient_data
from tests.support.sender import SendLedger, SenderGroup
from tests.support.services import service_config

from tests.support.env import free_port

NODE_PHASES = ("receiving", "mid-batch", "writing SRs", "forwarding", "copying to the output folder", "random")
WATCH_PHASES = ("taking inputs", "mid-batch", "writing SRs", "moving to done", "random")
PHASE_DEADLINE_S = 60.0


def _ro(spool: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{spool / 'journal.sqlite'}?mode=ro", uri=True, timeout=30)


def _query(spool: Path, sql: str, params: tuple = ()) -> list[tuple]:
    if not (spool / "journal.sqlite").exists():
        return []
    db = _ro(spool)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # e.g. the schema is not created yet
        return []
    finally:
        db.close()


def sr_in_flight(spool: Path) -> str | None:
    """An SR being written: a temporary file in reports/<job>/, or an SR there whose job is still processing."""
    reports = spool / "reports"
    ids = []
    try:
        entries = list(os.scandir(reports))
    except FileNotFoundError:
        return None
    for entry in entries:
        try:
            names = os.listdir(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if any(n.startswith(".tmp-") for n in names):
            return "a temporary SR file was being written"
        if names and entry.name.isdigit():
            ids.append(int(entry.name))
    if ids:
        marks = ",".join("?" * len(ids))
        rows = _query(spool, f"SELECT id FROM jobs WHERE state='processing' AND id IN ({marks})", tuple(ids))
        if rows:
            return f"SR written for job {rows[0][0]}, not yet recorded as reported"
    return None


def out_tmp_file(out: Path) -> str | None:
    """A report being copied into the output folder (its temporary file is there)."""
    try:
        return next((f"temporary file {e.name}" for e in os.scandir(out) if e.name.startswith(".tmp-")), None)
    except FileNotFoundError:
        return None


def watch_phase(predicate: Callable[[], str | None], deadline_s: float = PHASE_DEADLINE_S,
                service=None) -> str | None:  # noqa: ANN001
    """Poll `predicate` fast (2 ms) until it names what it saw; None after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        seen = predicate()
        if seen:
            return seen
        if service is not None and not service.alive():
            raise AssertionError("the service died on its own:\n" + service.log_text()[-3000:])
        time.sleep(0.002)
    return None


def after_kill(spool: Path, out: Path) -> dict[str, int]:
    """What a kill left behind (before the restart repairs it)."""
    rows = journal_rows(spool, "id, state, owner, disposed, input_file")
    known = {r["input_file"] for r in rows}
    return {
        "processing": sum(r["state"] == "processing" for r in rows),
        "delivery_claimed": sum(r["state"] == "reported" and r["owner"] is not None for r in rows),
        "final_not_moved": sum(r["state"] in ("delivered", "failed", "skipped") and not r["disposed"] for r in rows),
        "spool_tmp_files": len(list((spool / "tmp").iterdir())) if (spool / "tmp").exists() else 0,
        "orphan_inputs": sum(f"inputs/{p.name}" not in known for p in (spool / "inputs").iterdir())
        if (spool / "inputs").exists() else 0,
        "out_tmp_files": sum(p.name.startswith(".tmp-") for p in out.iterdir()) if out.exists() else 0,
    }


def status_reads_crashed_spool(spool: Path) -> None:
    """`medblip status` must read a spool whose service was just killed (read-only)."""
    proc = subprocess.run([sys.executable, "-m", "medblip_dicom", "status", "--spool", str(spool), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"medblip status failed on a crashed spool: {proc.stderr}"


def assert_spool_clean(spool: Path) -> None:
    """Nothing left over once every job is finished: no input, report, partial or orphaned file."""
    for sub in ("inputs", "reports", "tmp"):
        left = sorted(p.name for p in (spool / sub).iterdir())
        assert not left, f"spool/{sub} still holds {left[:5]}"


def orthanc_sr_uids(pacs) -> set[str]:  # noqa: ANN001
    """SOPInstanceUIDs of every SR Orthanc holds."""
    found = set()
    for series in pacs.post("/tools/find", b'{"Level": "Series", "Query": {"Modality": "SR"}, "Expand": true}'):
        for iid in series["Instances"]:
            found.add(pacs.get(f"/instances/{iid}")["MainDicomTags"]["SOPInstanceUID"])
    return found


@pytest.mark.slow
def test_sigkill_node_while_receiving_captioning_writing_and_forwarding(
        tmp_path: Path, tiny_model_dir, services, orthanc_factory, figures, weights_sha256, dciodvfy):
    rng = random.Random(seed() + 2)
    kills = scaled(14, 5)
    per_round = 16
    files = make_good_files(tmp_path / "staging", per_round * (kills + 1), studies=kills + 1, rng=rng)
    chunks = [dict(list(files.items())[i * per_round:(i + 1) * per_round]) for i in range(kills + 1)]
    out, spool, port = tmp_path / "out", tmp_path / "spool", free_port()
    pacs = orthanc_factory()
    pacs.start()
    config = service_config(tmp_path, tiny_model_dir, output={"dir": out},
                            node={"ae_title": "MEDBLIP", "port": port},
                            forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"})
    service = services("node", config)
    ledger = SendLedger()
    # Two concurrent streams: their instances share the node's group commits (integrations/spool/admit.py).
    sender = SenderGroup(port, ledger, streams=2, per_association=8)
    sender.start()
    hits: Counter[str] = Counter()
    seen_log: list[dict] = []
    left_behind: Counter[str] = Counter()
    started = time.perf_counter()
    try:
        for i in range(kills):
            phase = NODE_PHASES[i % len(NODE_PHASES)]
            service.start()
            service.wait_ready("listening on")
            base = sender.round_confirmed
            sender.add(chunks[i])
            if phase == "receiving":
                threshold = rng.randint(1, per_round // 2)
                seen = watch_phase(lambda: "association open, instances stored"
                                   if sender.in_association() and sender.round_confirmed - base >= threshold
                                   and sender.remaining() > 0 else None, service=service)
            elif phase == "mid-batch":
                seen = watch_phase(lambda: "jobs processing" if _query(
                    spool, "SELECT 1 FROM jobs WHERE state='processing' LIMIT 1") else None, service=service)
                if seen:
                    threading.Event().wait(rng.uniform(0, 0.15))  # somewhere inside the batch
            elif phase == "writing SRs":
                seen = watch_phase(lambda: sr_in_flight(spool), service=service)
            elif phase == "forwarding":
                seen = watch_phase(lambda: "reports claimed for delivery" if _query(
                    spool, "SELECT 1 FROM jobs WHERE state='reported' AND owner IS NOT NULL LIMIT 1") else None,
                                   service=service)
            elif phase == "copying to the output folder":
                seen = watch_phase(lambda: out_tmp_file(out), service=service)
            else:
                threading.Event().wait(rng.uniform(0.05, 2.0))
                seen = "random instant"
            assert service.alive(), service.log_text()[-3000:]
            service.kill()
            hits[phase if seen else f"{phase} (missed)"] += 1
            seen_log.append({"round": i + 1, "phase": phase, "seen": seen})
            left = after_kill(spool, out)
            left_behind.update({k: v for k, v in left.items() if v})
            status_reads_crashed_spool(spool)

        # Last life: the remaining traffic, then everything must finish.
        service.start()
        service.wait_ready("listening on")
        sender.add(chunks[-1])
        n = len(files)
        wait_for(lambda: len(ledger.confirmed) == n and sender.remaining() == 0, 120 + 2 * n,
                 "every instance acknowledged", interval_s=0.1)
        wait_for(lambda: pending(spool) == 0, 120 + 2 * n, "every job finished", interval_s=0.2)
        wait_for(lambda: len(orthanc_sr_uids(pacs)) >= n, 60, "every SR in Orthanc", interval_s=0.5)
        elapsed = time.perf_counter() - started
        assert service.stop() == 0
    finally:
        sender.close()
    assert sender.error is None, sender.error

    rows = journal_rows(spool)
    assert not [r for r in rows if r["state"] not in ("delivered", "skipped")], \
        [(r["id"], r["state"], r["reason"]) for r in rows if r["state"] not in ("delivered", "skipped")][:5]
    delivered = Counter(r["sop_instance_uid"] for r in rows if r["state"] == "delivered")
    assert set(delivered) == set(files) and set(delivered.values()) == {1}, "exactly one delivered job per instance"
    resent = [r for r in rows if r["state"] == "skipped"]
    assert all(r["reason"].startswith("duplicate of job") for r in resent), [r["reason"] for r in resent][:3]
    lost, duplicates = check_exactly_one_sr_each(check_output_folder(out), ledger.confirmed, weights_sha256)
    from tests.support.checks import expected_sr_uid

    assert orthanc_sr_uids(pacs) == {expected_sr_uid(uid, weights_sha256) for uid in files}
    assert_spool_clean(spool)
    validated, validate_s = validate_srs(sorted(out.iterdir()))
    scanned = scan_for_patient_data(service.log, spool)
    named = [p for p in NODE_PHASES[:min(kills, 5)]]
    assert all(hits[p] for p in named), f"phases not reached before their deadline: {dict(hits)}"
    figures.record("crash_node", kills=service.kills, starts=service.starts, instances=len(files),
                   c_store_attempts=ledger.attempts, c_store_success=len(ledger.confirmed),
                   broken_associations=ledger.broken_associations, duplicates_recognised=len(resent),
                   phases_hit=dict(hits), left_behind_by_kills=dict(left_behind), srs=validated,
                   srs_in_orthanc=len(files), lost=lost, duplicate_srs=duplicates, failed=0,
                   total_s=round(elapsed, 1), mean_startup_s=round(sum(service.startup_s) / len(service.startup_s), 1),
                   peak_rss_mib=mib(service.max_peak_rss), dciodvfy_s=round(validate_s, 1),
                   files_scanned_for_phi=scanned)


@pytest.mark.slow
def test_sigkill_watch_folder_while_taking_captioning_writing_and_moving(
        tmp_path: Path, tiny_model_dir, services, figures, weights_sha256, dciodvfy):
    rng = random.Random(seed() + 3)
    kills = scaled(6, 4)
    per_round = 16
    files = make_good_files(tmp_path / "staging", per_round * (kills + 1), studies=kills + 1, rng=rng)
    chunks = [list(files.values())[i * per_round:(i + 1) * per_round] for i in range(kills + 1)]
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    inbox.mkdir()
    config = service_config(tmp_path, tiny_model_dir, watch={"inbox": inbox, "settle_s": 0.3},
                            output={"dir": out})
    service = services("watch", config)
    hits: Counter[str] = Counter()
    left_behind: Counter[str] = Counter()
    started = time.perf_counter()

    def inbox_files() -> int:
        return sum(1 for p in inbox.iterdir() if p.is_file())

    # Start each round with the phase's traffic in place; 'taking inputs' drops the files once ready.
    for i in range(kills):
        phase = WATCH_PHASES[i % len(WATCH_PHASES)]
        if phase != "taking inputs":
            drop_into(inbox, chunks[i])
        service.start()
        service.wait_ready("watching ")
        if phase == "taking inputs":
            drop_into(inbox, chunks[i])
            seen = watch_phase(lambda: "some inputs taken, others still in the inbox"
                               if 0 < inbox_files() < per_round else None, service=service)
        elif phase == "mid-batch":
            seen = watch_phase(lambda: "jobs processing" if _query(
                spool, "SELECT 1 FROM jobs WHERE state='processing' LIMIT 1") else None, service=service)
            if seen:
                threading.Event().wait(rng.uniform(0, 0.15))
        elif phase == "writing SRs":
            seen = watch_phase(lambda: sr_in_flight(spool), service=service)
        elif phase == "moving to done":
            seen = watch_phase(lambda: "a finished job's input not yet moved" if _query(
                spool, "SELECT 1 FROM jobs WHERE state IN ('delivered', 'skipped', 'failed') AND disposed=0 LIMIT 1")
                else None, service=service)
        else:
            threading.Event().wait(rng.uniform(0.05, 2.0))
            seen = "random instant"
        assert service.alive(), service.log_text()[-3000:]
        service.kill()
        hits[phase if seen else f"{phase} (missed)"] += 1
        left = after_kill(spool, out)
        left_behind.update({k: v for k, v in left.items() if v})
        status_reads_crashed_spool(spool)

    drop_into(inbox, chunks[-1])
    service.start()
    service.wait_ready("watching ")
    n = len(files)
    wait_for(lambda: inbox_files() == 0 and pending(spool) == 0, 120 + 2 * n, "every input taken and finished",
             interval_s=0.2)
    elapsed = time.perf_counter() - started
    assert service.stop() == 0

    rows = journal_rows(spool)
    assert not [r for r in rows if r["state"] not in ("delivered", "skipped")], \
        [(r["id"], r["state"], r["reason"]) for r in rows if r["state"] not in ("delivered", "skipped")][:5]
    delivered = Counter(r["sop_instance_uid"] for r in rows if r["state"] == "delivered")
    assert set(delivered) == set(files) and set(delivered.values()) == {1}, "exactly one delivered job per instance"
    retaken = [r for r in rows if r["state"] == "skipped"]
    assert all(r["reason"].startswith("duplicate of job") for r in retaken), [r["reason"] for r in retaken][:3]
    # Every dropped file is in done/ (a file taken twice -- killed between the journal and the
    # inbox removal -- is there twice, the second copy with a reason file saying "duplicate").
    done = {p.name for p in (inbox / "done").iterdir()}
    assert {p.name for p in files.values()} <= done
    assert not (inbox / "failed").exists() or not any((inbox / "failed").iterdir())
    lost, duplicates = check_exactly_one_sr_each(check_output_folder(out), files, weights_sha256)
    assert_spool_clean(spool)
    validated, validate_s = validate_srs(sorted(out.iterdir()))
    scanned = scan_for_patient_data(service.log, spool, inbox / "done")
    named = [p for p in WATCH_PHASES[:min(kills, 4)]]
    assert all(hits[p] for p in named), f"phases not reached before their deadline: {dict(hits)}"
    figures.record("crash_watch", kills=service.kills, starts=service.starts, files=n, retaken_duplicates=len(retaken),
                   phases_hit=dict(hits), left_behind_by_kills=dict(left_behind), srs=validated, lost=lost,
                   duplicate_srs=duplicates, failed=0, total_s=round(elapsed, 1),
                   mean_startup_s=round(sum(service.startup_s) / len(service.startup_s), 1),
                   peak_rss_mib=mib(service.max_peak_rss), dciodvfy_s=round(validate_s, 1),
                   files_scanned_for_phi=scanned)
