"""The review station's export, de-identified (``medblip review export --deidentify``), is read by
``medblip train --data`` unchanged and trains; nothing identifying is left in it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("deid")
pytest.importorskip("fastapi")

from medblip_dicom.apps.main import main  # noqa: E402
from medblip_dicom.integrations.review.signing import Reviewer  # noqa: E402
from medblip_dicom.training.records import load_records  # noqa: E402

from tests.support.phi import identifying_values, scan  # noqa: E402
from tests.support.privacy import PATIENT_ID, PATIENT_NAME  # noqa: E402
from tests.support.review import review_spool  # noqa: E402,F401 - fixture

ALICE = Reviewer("alice", "Doe^Alice", "Test Hospital")
FAMILY, GIVEN = PATIENT_NAME.split("^")[:2]


def _export(rs, tmp_path, *extra: str) -> int:
    return main(["review", "export", "--out", str(tmp_path / "offsite" / "feedback.jsonl"), "--spool", str(rs.root),
                 *extra])


def test_deidentify_needs_a_key_and_the_key_flags_need_deidentify(review_spool, tmp_path, capsys):
    rs = review_spool(1)
    assert _export(rs, tmp_path, "--deidentify") == 2
    assert "--key-file" in capsys.readouterr().err
    assert _export(rs, tmp_path, "--key-file", str(tmp_path / "k")) == 2
    assert "only with --deidentify" in capsys.readouterr().err


@pytest.mark.slow
def test_the_deidentified_export_trains_and_holds_no_identifier(review_spool, tiny_model_dir, tmp_path, capsys, caplog):
    rs = review_spool(4)
    rs.store.sign(rs.ai_uids[0], ALICE, rs.store.item(rs.ai_uids[0])["caption"])
    rs.store.sign(rs.ai_uids[1], ALICE, f"{GIVEN.upper()} {FAMILY.upper()} ({PATIENT_ID}): an axial mr image of the head")
    rs.store.sign(rs.ai_uids[2], ALICE, f"a ct slice of the thorax, {FAMILY}, {GIVEN}")
    rs.store.reject(rs.ai_uids[3], ALICE, f"this is not {GIVEN}'s scan")
    (tmp_path / "site.key").write_text("q" * 64)
    (tmp_path / "site.key").chmod(0o600)
    caplog.clear()  # the spool's own logs (UIDs of the sources) came before: the export's are scanned
    capsys.readouterr()
    assert _export(rs, tmp_path, "--deidentify", "--key-file", str(tmp_path / "site.key"),
                   "--option", "retain-modified-dates") == 0
    said = capsys.readouterr()
    assert "de-identified: 3 row(s) with identifying text removed, 0 image(s) left out" in said.out
    offsite = tmp_path / "offsite"
    rows = [json.loads(line) for line in (offsite / "feedback.jsonl").read_text().splitlines()]
    by_caption = {r["caption"] for r in rows}
    assert {"an axial mr image of the head", "a ct slice of the thorax"} <= by_caption
    assert all(r["image"].startswith("images/") and r["id"].startswith("2.25.") for r in rows)
    rejected = json.loads((offsite / "feedback.rejected.jsonl").read_text())
    assert rejected["reason"] == "this is not 's scan" and rejected["id"].startswith("2.25.")
    card = json.loads((offsite / "feedback.datacard.json").read_text())
    assert card["by_status"] == {"rejected": 1, "signed": 3} and card["dates"]["study_date_range"]
    assert [o["name"] for o in card["deidentification"]["options"]] == ["retain-modified-dates"]
    values = identifying_values(rs.sources) | {PATIENT_NAME, PATIENT_ID, FAMILY, GIVEN}
    assert scan(values, offsite, texts=[said.out, said.err, caplog.text]) == []
    assert [r.id for r in load_records(offsite / "feedback.jsonl")] == [r["id"] for r in rows]
    run = tmp_path / "run"
    assert main(["train", "--data", str(offsite / "feedback.jsonl"), "--base-model", str(tiny_model_dir), "--out",
                 str(run), "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--max-length", "24", "--seed", "0",
                 "-q"]) == 0
    assert len(json.loads((run / "data" / "train-kept.json").read_text())) == 3
