"""Attacks on the review store: a second station on the same spool, and amendments without kept sources.

Rules under test:

- a station that starts (and recovers) while another signs never removes a file that a signature
  row points at, nor a temporary file that a live process may still rename; every sign answers
  201/200 or 409, never 500; every signature row points at an existing file;
- with ``[review] keep_sources = false`` a signed report can be amended again and again, on the API
  and the page; the amendment is a valid SR (dciodvfy: no errors) naming its predecessor, with the
  source's patient and study, and no copy of the source image stays behind;
- an amendment that truly cannot be built is refused with 409 and a sentence, never a 500.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from medblip_dicom.integrations.review import store as store_module
from medblip_dicom.integrations.review.app import create_app
from medblip_dicom.integrations.review.signing import Reviewer
from medblip_dicom.integrations.review.store import ReviewStore

from tests.support.review import api_token, csrf_of, login
from tests.support.env import wait_for

ALICE = Reviewer("alice", "Doe^Alice", "Test Hospital")
BOB = Reviewer("bob", "Roe^Bob", "Test Hospital")
#: How long the second station keeps starting over while the first signs (the loop is bounded by count too).
STRESS_DEADLINE_S = 240.0


def predecessor_uid(sr: pydicom.Dataset) -> str:
    return str(sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
               .ReferencedSOPInstanceUID)


def evidence_uids(sr: pydicom.Dataset) -> list[str]:
    return [str(r.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence]


def rows_pointing_at_nothing(root: Path, store: ReviewStore) -> list[str]:
    return [r["uid"] for r in store.db.rows("SELECT uid, file FROM review_signed") if not (root / r["file"]).is_file()]


def dciodvfy_errors(exe: str, path: Path) -> list[str]:
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def test_a_station_starting_while_another_signs_keeps_the_signed_report(review_spool, monkeypatch):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    second = ReviewStore(rs.root)  # the second station on the same spool
    written, release = threading.Event(), threading.Event()

    def between_file_and_commit() -> None:
        written.set()
        release.wait(60)

    monkeypatch.setattr(store_module, "_before_commit", between_file_and_commit)
    outcome: dict[str, object] = {}

    def sign() -> None:
        try:
            outcome["signature"] = rs.store.sign(ai_uid, ALICE, "signed while a station starts")
        except Exception as exc:  # noqa: BLE001 - what a reviewer would see as a 500
            outcome["signature"] = exc

    def recover() -> None:
        outcome["removed"] = second.recover()

    signer = threading.Thread(target=sign)
    signer.start()
    try:
        assert written.wait(60), "the signature never reached its commit"
        recovering = threading.Thread(target=recover)
        recovering.start()
        recovering.join(3.0)  # time for a recovery that does not wait for the signature to end
    finally:
        release.set()
    signer.join(60)
    recovering.join(60)
    try:
        signature = outcome["signature"]
        assert isinstance(signature, store_module.Signature), signature
        assert outcome["removed"] == 0
        assert signature.path.is_file(), "the starting station removed a committed signed report"
        assert rows_pointing_at_nothing(rs.root, rs.store) == []
        amended = second.sign(ai_uid, BOB, "amended from the second station", predecessor=signature.uid)
        assert predecessor_uid(pydicom.dcmread(amended.path)) == signature.uid
    finally:
        second.close()


def test_recovery_keeps_what_a_live_writer_may_still_rename_and_removes_what_the_dead_left(review_spool, tmp_path):
    rs = review_spool(1)
    signature = rs.store.sign(rs.ai_uids[0], ALICE, "committed before the restart")
    signed = rs.root / "review" / "signed"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    dead_pid = int(gone.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        live_temp = signed / f".tmp-{live.pid}-abc123.dcm"
        dead_temp = signed / f".tmp-{dead_pid}-def456.dcm"
        orphan = signed / "2.25.1234567890.dcm"  # complete, never committed (a process killed before its commit)
        for path in (live_temp, dead_temp, orphan):
            path.write_bytes(b"partial")
        assert rs.store.recover() == 2
        assert live_temp.is_file(), "recovery removed a temporary file that a live process may still rename"
        assert not dead_temp.exists() and not orphan.exists()
        assert signature.path.is_file()
    finally:
        live.communicate(timeout=60)


_RESTARTING_STATION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from medblip_dicom.integrations.review.store import ReviewStore
    root, stop, ready, deadline = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    starts = removed = 0
    end = time.monotonic() + deadline
    while not stop.exists() and time.monotonic() < end:
        store = ReviewStore(root)  # what `medblip review` does when it starts: open the store, recover
        removed += store.recover()
        store.close()
        starts += 1
        ready.touch()
    print(starts, removed)
""")


def test_two_stations_on_one_spool_lose_no_signed_report(review_spool, tmp_path, dciodvfy):
    rs = review_spool(4)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    station = subprocess.Popen([sys.executable, "-c", _RESTARTING_STATION, str(rs.root), str(stop), str(ready),
                                str(STRESS_DEADLINE_S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answers: list[tuple[int, str]] = []
    try:
        wait_for(ready.exists, 120, "the second station's first start")
        with TestClient(create_app(rs.store), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
            c.rs = rs
            headers = api_token(c)
            heads = dict.fromkeys(rs.ai_uids)
            for round_ in range(3):
                for uid in rs.ai_uids:
                    body = {"text": f"round {round_} of {uid[-6:]}", "predecessor": heads[uid]}
                    response = c.post(f"/api/reports/{uid}/sign", json=body, headers=headers)
                    answers.append((response.status_code, response.text[:200]))
                    if response.status_code == 201:
                        heads[uid] = response.json()["uid"]
    finally:
        stop.touch()
        out, err = station.communicate(timeout=120)
    assert station.returncode == 0, err
    starts, removed = (int(n) for n in out.split())
    assert starts >= 1
    assert [a for a in answers if a[0] != 201] == []
    assert removed == 0, "the restarting station removed signed reports"
    assert rows_pointing_at_nothing(rs.root, rs.store) == []
    for uid in rs.ai_uids:  # every signed report can still be amended
        current = rs.store.signatures(uid)[-1]
        amended = rs.store.sign(uid, BOB, "amended after the stations ran", predecessor=current.uid)
        assert predecessor_uid(pydicom.dcmread(amended.path)) == current.uid
    assert dciodvfy_errors(dciodvfy, amended.path) == []


def _check_chain(rs, ai_uid: str, source: Path, uids: list[str], dciodvfy: str) -> None:
    """Each signed version is a valid SR on the source's patient and study, naming the one before."""
    original = pydicom.dcmread(source, stop_before_pixels=True)
    previous = ai_uid
    for uid in uids:
        (signature,) = [s for s in rs.store.signatures(ai_uid) if s.uid == uid]
        sr = pydicom.dcmread(signature.path)
        assert dciodvfy_errors(dciodvfy, signature.path) == []
        assert predecessor_uid(sr) == previous
        assert (sr.PatientID, str(sr.PatientName), sr.StudyInstanceUID) == \
               (original.PatientID, str(original.PatientName), original.StudyInstanceUID)
        assert evidence_uids(sr) == [str(original.SOPInstanceUID)]
        previous = uid
    folder = rs.root / rs.store.item(ai_uid)["folder"]
    kept_pixels = [p.name for p in folder.iterdir() if "PixelData" in pydicom.dcmread(p, force=True)]
    assert kept_pixels == [], "keep_sources = false, but the source image is still kept"


def test_without_kept_sources_amendments_work_on_the_api(review_spool, dciodvfy):
    rs = review_spool(1)
    rs.store.keep_sources = False
    ai_uid = rs.ai_uids[0]
    with TestClient(create_app(rs.store), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        c.rs = rs
        headers = api_token(c)
        uids: list[str] = []
        for text in ("first signed text", "first amendment", "second amendment"):
            response = c.post(f"/api/reports/{ai_uid}/sign", json={"text": text, "predecessor": (uids or [None])[-1]},
                              headers=headers)
            assert response.status_code == 201, response.text
            uids.append(response.json()["uid"])
    _check_chain(rs, ai_uid, rs.sources[0], uids, dciodvfy)


def test_without_kept_sources_amendments_work_on_the_page(review_spool, dciodvfy):
    rs = review_spool(1)
    rs.store.keep_sources = False
    ai_uid = rs.ai_uids[0]
    with TestClient(create_app(rs.store), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        login(c)
        for action, text in (("as-is", ""), ("edited", "amended on the page"), ("edited", "amended again")):
            page = c.get(f"/reports/{ai_uid}")
            assert page.status_code == 200
            version = rs.store.item(ai_uid)["current_uid"] or ai_uid
            response = c.post(f"/reports/{ai_uid}/sign", data={"csrf": csrf_of(page.text), "action": action,
                                                               "text": text, "version": version},
                              follow_redirects=False)
            assert response.status_code == 303, response.text[:300]
    uids = [s.uid for s in rs.store.signatures(ai_uid)]
    assert len(uids) == 3
    _check_chain(rs, ai_uid, rs.sources[0], uids, dciodvfy)


def test_a_signed_report_whose_file_was_lost_can_still_be_amended(review_spool, dciodvfy):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    first = rs.store.sign(ai_uid, ALICE, "signed, then its file was lost")
    first.path.unlink()
    with TestClient(create_app(rs.store), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        c.rs = rs
        response = c.post(f"/api/reports/{ai_uid}/sign", json={"text": "amended", "predecessor": first.uid},
                          headers=api_token(c, "bob"))
    assert response.status_code == 201, response.text
    amended = rs.store.signatures(ai_uid)[-1]
    sr = pydicom.dcmread(amended.path)
    assert predecessor_uid(sr) == first.uid and amended.uid == response.json()["uid"]
    assert dciodvfy_errors(dciodvfy, amended.path) == []


@pytest.mark.parametrize("where", ["api", "page"])
def test_an_amendment_that_cannot_be_built_is_a_409_with_a_sentence(review_spool, where):
    rs = review_spool(1)
    ai_uid = rs.ai_uids[0]
    first = rs.store.sign(ai_uid, ALICE, "signed before the review copy was lost")
    for path in rs.store.item_files(rs.store.item(ai_uid)):
        path.unlink(missing_ok=True)  # the item's folder emptied by hand
    started = time.monotonic()
    with TestClient(create_app(rs.store), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        c.rs = rs
        if where == "api":
            response = c.post(f"/api/reports/{ai_uid}/sign", json={"text": "amended", "predecessor": first.uid},
                              headers=api_token(c))
            message = response.json()["detail"] if response.status_code != 500 else response.text
        else:
            login(c)
            page = c.get(f"/reports/{ai_uid}")
            response = c.post(f"/reports/{ai_uid}/sign", data={"csrf": csrf_of(page.text), "action": "edited",
                                                               "text": "amended", "version": first.uid})
            message = response.text
    assert response.status_code == 409, message[:300]
    assert "AI report" in message and "cannot be amended" in message
    assert [s.uid for s in rs.store.signatures(ai_uid)] == [first.uid]
    assert time.monotonic() - started < 60
