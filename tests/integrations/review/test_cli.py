"""``medblip review``: accounts from the command line, the served app over TLS, export -> train, stats."""

from __future__ import annotations

import io
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request

import pytest

from medblip_dicom.apps.main import main
from medblip_dicom.integrations.review.signing import Reviewer

from tests.support.env import free_port, require_tool, wait_for
from tests.support.privacy import PATIENT_ID, PATIENT_NAME
from tests.support.services import make_certificates

ALICE = Reviewer("alice", "Doe^Alice", "Test Hospital")


def test_add_user_reads_the_password_from_stdin_and_add_token_prints_one(review_spool, monkeypatch, capsys):
    rs = review_spool(1)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long secret password\n"))
    assert main(["review", "add-user", "carol", "--name", "Poe^Carol", "--password-stdin", "--spool", str(rs.root)]) == 0
    assert "a long secret password" not in capsys.readouterr().out
    from medblip_dicom.integrations.review.accounts import Accounts

    accounts = Accounts(rs.store.db)
    assert accounts.authenticate("carol", "a long secret password").person_name == "Poe^Carol"
    assert main(["review", "add-token", "carol", "--spool", str(rs.root)]) == 0
    token = capsys.readouterr().out.strip()
    assert accounts.user_for_token(token).username == "carol"
    assert main(["review", "add-token", "nobody", "--spool", str(rs.root)]) == 2
    assert "no reviewer 'nobody'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["review", "add-user", "dave", "--name", "Poe^Dave", "--password-stdin", "--spool", str(rs.root)]) == 2
    assert main(["review", "export", "--out", "x.jsonl", "--spool", str(rs.root / "nothing")]) == 2
    assert "not a spool folder" in capsys.readouterr().err


def test_the_station_serves_over_tls_on_loopback_with_secure_cookies(review_spool, tmp_path):
    rs = review_spool(1)
    certs = make_certificates(tmp_path / "certs", require_tool("openssl"))
    port = free_port()
    config = tmp_path / "medblip.toml"
    config.write_text(f'[spool]\ndir = "{rs.root}"\n[review]\nport = {port}\norganization = "Test Hospital"\n'
                      f'[review.tls]\ncert = "{certs["server.pem"]}"\nkey = "{certs["server.key"]}"\n')
    log = open(tmp_path / "review.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "medblip_dicom", "review", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "review.log").read_text()
            try:
                return opener.open(f"https://127.0.0.1:{port}/login", timeout=5).status == 200
            except OSError:
                return False

        wait_for(up, 60, "the review station")
        cookie = opener.open(f"https://127.0.0.1:{port}/login", timeout=5).headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        from tests.support.services import listening_addresses

        assert listening_addresses(port) == ["127.0.0.1"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.close()
    text = (tmp_path / "review.log").read_text()
    assert PATIENT_NAME not in text and PATIENT_ID not in text


@pytest.mark.slow
def test_the_export_trains_and_the_rejected_go_apart(review_spool, tiny_model_dir, tmp_path, capsys):
    rs = review_spool(4)
    rs.store.sign(rs.ai_uids[0], ALICE, rs.store.item(rs.ai_uids[0])["caption"])  # unchanged
    rs.store.sign(rs.ai_uids[1], ALICE, "an axial mr image of the head")
    rs.store.sign(rs.ai_uids[2], ALICE, "a ct slice of the thorax")
    rs.store.reject(rs.ai_uids[3], ALICE, "wrong anatomy")
    out = tmp_path / "feedback.jsonl"
    assert main(["review", "export", "--out", str(out), "--spool", str(rs.root)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rejected = [json.loads(line) for line in (tmp_path / "feedback.rejected.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == set(rs.ai_uids[:3]) and [r["id"] for r in rejected] == [rs.ai_uids[3]]
    assert [by_id[u]["edited"] for u in rs.ai_uids[:3]] == [False, True, True]
    assert by_id[rs.ai_uids[1]]["caption"] == "an axial mr image of the head"
    assert by_id[rs.ai_uids[1]]["ai_caption"] == "ai caption number 1 of the scan"
    assert rows[0]["reviewer"].startswith("r-") and "alice" not in out.read_text()
    assert PATIENT_NAME not in out.read_text() and PATIENT_ID not in out.read_text()
    assert rejected[0]["reason"] == "wrong anatomy"
    run = tmp_path / "run"
    assert main(["train", "--data", str(out), "--base-model", str(tiny_model_dir), "--out", str(run), "--epochs", "1",
                 "--batch-size", "2", "--device", "cpu", "--max-length", "24", "--seed", "0", "-q"]) == 0
    kept = json.loads((run / "data" / "train-kept.json").read_text())
    assert len(kept) == 3
    assert (run / "best" / "model.safetensors").exists() or list((run / "best").glob("*.safetensors"))


def test_stats_count_by_model_and_modality_with_edit_distance_bleu_and_a_plot(review_spool, tmp_path, capsys):
    rs = review_spool(3, captions=["a ct of the chest", "an mr of the head", "a ct of the abdomen"])
    rs.store.sign(rs.ai_uids[0], ALICE, "a ct of the chest")                  # unchanged
    rs.store.sign(rs.ai_uids[1], ALICE, "an axial mr of the brain")           # 1 word added, 1 changed
    rs.store.reject(rs.ai_uids[2], ALICE, "not an abdomen")
    plot = tmp_path / "review.png"
    assert main(["review", "stats", "--json", "--plot", str(plot), "--spool", str(rs.root)]) == 0
    out = capsys.readouterr().out
    rows = {(r["model_version"], r["modality"]): r for r in json.loads(out[:out.rindex("]") + 1])}
    total = rows[("all", "all")]
    assert (total["reviewed"], total["signed_unchanged"], total["edited"], total["rejected"]) == (3, 1, 1, 1)
    assert rows[("v1.0", "MR")]["mean_word_edit_distance"] == 2.0
    assert rows[("v1.0", "CT")]["mean_word_edit_distance"] == 0.0 and rows[("v1.0", "CT")]["bleu"] == 1.0
    assert 0.0 <= total["bleu"] < 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["review", "stats", "--spool", str(rs.root)]) == 0
    assert "model version" in capsys.readouterr().out


def test_a_journal_held_by_another_process_at_start_up_is_one_line(review_spool, monkeypatch, capsys):
    import sqlite3

    from medblip_dicom.integrations.review.db import ReviewDatabase
    from medblip_dicom.integrations.review.store import ReviewStore

    rs = review_spool(1)
    monkeypatch.setattr(ReviewDatabase, "BUSY_TIMEOUT_S", 0.2)
    other = sqlite3.connect(rs.root / "journal.sqlite", isolation_level=None)
    recover = ReviewStore.recover

    def held_meanwhile(store):  # another process takes the journal after the station opened it
        other.execute("BEGIN IMMEDIATE")
        return recover(store)

    monkeypatch.setattr(ReviewStore, "recover", held_meanwhile)
    try:
        assert main(["review", "--spool", str(rs.root), "--port", str(free_port())]) == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    err = capsys.readouterr().err
    assert err.startswith("medblip review: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "journal.sqlite" in err and "held the journal for more than 0.2 s" in err


@pytest.mark.parametrize("organization, words", [("St\tElsewhere", "position 3, U+0009"),
                                                 ("Radiology\\\\Imaging", "position 10, U+005C"),
                                                 ("x" * 65, "65 characters")])
def test_an_organization_dicom_cannot_hold_fails_at_start_up(review_spool, tmp_path, capsys, organization, words):
    rs = review_spool(1)
    config = tmp_path / "medblip.toml"
    config.write_text(f'[spool]\ndir = "{rs.root}"\n[review]\nport = {free_port()}\norganization = "{organization}"\n')
    assert main(["review", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: [review] organization" in err and words in err and err.count("\n") == 1


def test_the_station_writes_signed_pdfs_when_the_configuration_asks(review_spool, tmp_path):
    import argparse

    from medblip_dicom.apps import review as review_app

    pytest.importorskip("reportlab", reason="reportlab (the pdf extra) writes the PDF")
    rs = review_spool(1)
    config = tmp_path / "medblip.toml"
    config.write_text(f'[spool]\ndir = "{rs.root}"\n[output]\npdf = true\n')
    _, store = review_app._open("review", argparse.Namespace(config=str(config)))
    try:
        store.sign(rs.ai_uids[0], ALICE, "signed with the pdf the configuration asks for")
        (job,) = [j for j in rs.spool.jobs() if j.origin == "review"]
        assert len(job.reports) == 2
    finally:
        store.close()
