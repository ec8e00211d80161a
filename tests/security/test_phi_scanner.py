"""The PHI scanner: for a corpus with known identifiers (real test files, and files made with names in
person names, free text, private attributes and sequences, and captions that repeat them), no
identifying value of any input appears anywhere in what ``medblip deid`` writes (images, manifest,
data card) or logs; the same input gives the same pseudonyms, another key others."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("deid")

from medblip_dicom.apps.main import main  # noqa: E402

from tests.support.dicom import testdata as data_file  # noqa: E402
from tests.support.phi import ADDRESS, INSTITUTION, PRIVATE_NOTE, STUDY_DATE, crafted, identifying_values, scan  # noqa: E402
from tests.support.privacy import PATIENT_ID, PATIENT_NAME  # noqa: E402

REAL = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm", "693_J2KR.dcm")
CAPTIONS = [
    f"{PATIENT_NAME.replace('^', ' ')}: small nodule right upper lobe",
    "QUENNELL, OTTOLINE (ID " + PATIENT_ID.lower().replace("-", " ") + f") seen {STUDY_DATE[6:]}/{STUDY_DATE[4:6]}/"
    f"{STUDY_DATE[:4]} at {INSTITUTION}",
    f"no change since 14 May 2023; lives at {ADDRESS}",
    "axial slice of the brain without contrast",
]


def caption(path: Path, i: int) -> str:
    """A caption repeating identifying values of its own image: the crafted patient's in many forms,
    a real file's own name, ID and dates."""
    ds = pydicom.dcmread(path)
    if str(ds.PatientName) == PATIENT_NAME:
        return CAPTIONS[i % len(CAPTIONS)]
    name = " ".join(reversed(str(ds.PatientName).replace("^", " ").split()))
    return f"{name} ({ds.PatientID}), {ds.get('StudyDate', '')}: {CAPTIONS[-1]}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A manifest of crafted and real files (two of one study), with captions and a rejected row."""
    root = tmp_path_factory.mktemp("corpus")
    study = pydicom.uid.generate_uid()
    images = [crafted(root / "in", study_uid=study, instance=1), crafted(root / "in", study_uid=study, instance=2),
              crafted(root / "in", "MR_small.dcm", PatientName="Ravenscroft^Philippa^Anne", PatientID="PX-20417-RV",
                      StudyDescription="MR head, Philippa Ravenscroft", ImageComments="PX 20417 RV seen 14.5.2023")]
    for name in REAL:
        images.append(root / "in" / name)
        images[-1].write_bytes(Path(data_file(name)).read_bytes())
    rows = [{"id": pydicom.dcmread(p).SOPInstanceUID, "image": str(p), "caption": caption(p, i),
             "ai_caption": caption(p, i + 1), "edited": True, "model_name": "tiny-blip",
             "model_version": "v1", "modality": "CT", "reviewer": "r-0123456789ab", "signed_at": "2023-05-14T10:00:00+00:00",
             "patient_note": PATIENT_NAME, "sr_uid": pydicom.uid.generate_uid()} for i, p in enumerate(images)]
    manifest = root / "feedback.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rejected = [{"id": rows[0]["id"], "image": str(images[0]), "ai_caption": "a chest ct",
                 "reason": f"wrong patient: this is {PATIENT_NAME.split('^')[1]}, not her", "model_name": "tiny-blip",
                 "model_version": "v1", "modality": "CT", "reviewer": "r-0123456789ab",
                 "rejected_at": "2023-05-15T09:00:00+00:00"}]
    (root / "feedback.rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
    (root / "site.key").write_text("s" * 64)
    (root / "other.key").write_text("o" * 64)
    return manifest, images


def run(corpus, out: Path, key: str, caplog, capsys, *options: str) -> str:
    manifest, _ = corpus
    caplog.set_level(logging.DEBUG)
    argv = ["deid", str(manifest), str(out), "--key-file", str(manifest.parent / key), "-v"]
    for option in options:
        argv += ["--option", option]
    assert main(argv) == 0
    captured = capsys.readouterr()
    return caplog.text + captured.out + captured.err


@pytest.mark.parametrize("options", [(), ("retain-modified-dates", "clean-descriptors")], ids=["basic", "dates+descriptors"])
def test_nothing_identifying_leaves_in_any_byte_or_log(corpus, tmp_path, caplog, capsys, options):
    manifest, images = corpus
    values = identifying_values(images) | {PATIENT_NAME, PATIENT_ID, PRIVATE_NOTE, "Quennell", "Ottoline", "Ravenscroft"}
    assert len(values) > 60  # the scanner has something to find
    logs = run(corpus, tmp_path / "out", "site.key", caplog, capsys, *options)
    assert scan(values, tmp_path / "out", texts=[logs]) == []
    rows = [json.loads(line) for line in (tmp_path / "out" / "feedback.jsonl").read_text().splitlines()]
    card = json.loads((tmp_path / "out" / "datacard.json").read_text())
    assert len(rows) == len(images) and card["counts"]["captions_changed"] == len(images) + 1  # + the rejected
    assert card["by_status"] == {"manifest": len(images), "rejected": 1} and card["columns_dropped"] == ["patient_note"]
    assert rows[0]["caption"] == "small nodule right upper lobe"
    assert rows[-1]["caption"].endswith(CAPTIONS[-1]) and rows[3]["caption"] == CAPTIONS[-1]
    assert all(not Path(r["image"]).is_absolute() and (tmp_path / "out" / r["image"]).is_file() for r in rows)
    assert ("signed_at" in rows[0]) == bool(options)


def test_the_scanner_finds_what_is_left(corpus, tmp_path):
    """The scanner itself: an input copied as it is, and a caption left as it was, are found."""
    _, images = corpus
    values = identifying_values(images)
    (tmp_path / "leak").mkdir()
    (tmp_path / "leak" / "copy.dcm").write_bytes(images[0].read_bytes())
    hits = scan(values, tmp_path / "leak", texts=[CAPTIONS[1]])
    assert any(PATIENT_ID in h for h in hits) and any("copy.dcm" in h for h in hits)
    assert any(h.startswith("text 0") for h in hits)


def test_same_key_same_pseudonyms_other_key_others(corpus, tmp_path, caplog, capsys):
    for out, key in (("a", "site.key"), ("b", "site.key"), ("c", "other.key")):
        run(corpus, tmp_path / out, key, caplog, capsys)
    manifests = {out: (tmp_path / out / "feedback.jsonl").read_text() for out in "abc"}
    images = {out: sorted(p.name for p in (tmp_path / out / "images").iterdir()) for out in "abc"}
    assert manifests["a"] == manifests["b"] and images["a"] == images["b"]
    assert not set(images["a"]) & set(images["c"])
    for name in images["a"]:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    study = {pydicom.dcmread(tmp_path / "a" / "images" / n).StudyInstanceUID for n in images["a"]}
    assert len(study) == len(images["a"]) - 1  # the two crafted images of one study share one pseudonymous study
