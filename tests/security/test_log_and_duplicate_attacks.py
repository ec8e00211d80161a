"""Attacks on two promises: logs never hold patient data, and one SOPInstanceUID gets one report.

1. Hostile names (no caret, HTML, a backslash, 200 characters, quotes, non-ASCII, six components, a
   name where a number belongs) and IDs go through ``medblip caption -v``, the watch service at
   ``-v`` (and the review station signing their reports) and the node at ``-v`` with JSON logs.
   highdicom and pydicom warn about such values quoting them; every line the processes wrote
   (stderr, the spool's journal, reason files) is scanned: none holds any of the values.
2. Two different images with one SOPInstanceUID: the first is captioned, the second is skipped as
   ``Duplicate`` naming the first, in the library, ``medblip caption``, ``medblip batch`` and the
   services; a byte-identical copy is not captioned twice either.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.support.dicom import testdata as data_file
from tests.support.env import free_port, wait_for
from tests.support.inputs import drop_into
from tests.support.journal import journal_rows, pending
from tests.support.privacy import find_values
from tests.support.services import service_config, write_toml

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

LONG_NAME = "Longname" + "Zq" * 96  # 200 characters, one component
HOSTILE_NAMES = (
    "DOE JOHN",  # no caret: highdicom quotes it in a warning
    "<script>alert(1)</script>",
    "Backslashia\\Quuxley",  # a backslash: two values in DICOM
    LONG_NAME,
    'O"Quotely^Ann\'Lise',  # both quote characters inside the value
    "Grüßmeier^Zoë",
    "山田^太郎",
    "Sixpartia^Tombly^Nomen^Quarto^Quinto^Partsix",  # more components than PN allows
)
HOSTILE_ID = "HOSTILE-ID-8842"
OTHER_IDS = ("OTHER-ID-5521", "OTHER-ID-7730")
NAME_AS_NUMBER = "ZORBLATIS42"  # in InstanceNumber (IS): pydicom warns "Invalid value for VR IS: '...'"

#: What no log line may hold: every value, and each distinctive part of it.
SECRETS = (*HOSTILE_NAMES, "alert(1)", "Backslashia", "Quuxley", "Zq" * 12, "Quotely", "Grüßmeier", "Zoë", "山田",
           "太郎", "Sixpartia", "Partsix", HOSTILE_ID, *OTHER_IDS, NAME_AS_NUMBER)


def hostile_corpus(folder: Path, *, failing: bool = True) -> list[Path]:
    """One image per hostile name (as PatientName; the next two names as ReferringPhysicianName and
    OperatorsName; the hostile IDs), a name where InstanceNumber belongs, a non-image (an SR) with a
    hostile name, and (with `failing`) a truncated image, so that reason files are written too."""
    folder.mkdir(parents=True)
    paths = []
    for i, name in enumerate(HOSTILE_NAMES):
        ds = pydicom.dcmread(data_file("CT_small.dcm" if i % 2 == 0 else "MR_small.dcm"))
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = name
        ds.ReferringPhysicianName = HOSTILE_NAMES[(i + 1) % len(HOSTILE_NAMES)]
        ds.OperatorsName = HOSTILE_NAMES[(i + 2) % len(HOSTILE_NAMES)]
        ds.PatientID = HOSTILE_ID
        ds.OtherPatientIDs = list(OTHER_IDS)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.InstanceNumber = 98765432101 if i == 0 else i + 1
        path = folder / f"hostile-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if i == 0:  # the same length, so the file stays valid: a name where a number belongs
            path.write_bytes(path.read_bytes().replace(b"98765432101 ", NAME_AS_NUMBER.encode() + b" "))
        paths.append(path)
    sr = pydicom.dcmread(data_file("test-SR.dcm"))
    sr.PatientName, sr.PatientID = "DOE JOHN", HOSTILE_ID
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    paths.append(folder / "hostile-sr.dcm")
    sr.save_as(paths[-1], enforce_file_format=True)
    if failing:
        whole = paths[1].read_bytes()
        ds = pydicom.dcmread(paths[1])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / "hostile-truncated.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
        paths[-1].write_bytes(paths[-1].read_bytes()[:len(whole) - 4000])
    return paths


def assert_no_secret(*where: Path) -> None:
    """No hostile value in any file under `where` but DICOM files; the DICOM audit trail
    (``audit.xml``) names the patient by ID, as PS3.15 intends, and no name."""
    hits = sorted({*find_values(SECRETS, *where, skip=["audit.xml"]),
                   *find_values([s for s in SECRETS if s not in (HOSTILE_ID, *OTHER_IDS)], *where)})
    assert not hits, f"{len(hits)} hostile value(s) in logs, reason files or journals:\n" + "\n".join(hits[:20])


def assert_withheld(text: str) -> None:
    """The libraries did warn about the hostile values (the scan had something to find), with the
    values withheld and the messages' shape kept."""
    assert "is unlikely to represent the intended person name" in text
    assert "<value withheld>" in text


# -- 1. hostile names and the logs ----------------------------------------------------------------


def test_hostile_names_reach_no_line_of_medblip_caption_verbose(tmp_path, tiny_model_dir):
    corpus = hostile_corpus(tmp_path / "corpus")
    log = tmp_path / "caption.log"
    with open(log, "wb") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "medblip_dicom", "caption", str(tmp_path / "corpus"), "--model", str(tiny_model_dir),
             "--out", str(tmp_path / "out"), "--per-series", "each", "--device", "cpu", "--num-beams", "1",
             "--max-new-tokens", "8", "-v"], stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text(errors="replace")
    assert proc.returncode == 1, text[-3000:]  # the truncated file failed
    assert f"captioned {len(HOSTILE_NAMES)} of {len(corpus)} files (1 failed, 1 skipped)" in text, text[-3000:]
    assert_no_secret(log)
    assert_withheld(text)


def _api(port: int, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def test_hostile_names_reach_no_log_of_the_watch_service_nor_of_the_review_station(tmp_path, tiny_model_dir,
                                                                                     services):
    from medblip_dicom.integrations.review.accounts import Accounts
    from medblip_dicom.integrations.review.store import ReviewStore

    corpus = hostile_corpus(tmp_path / "staging")
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    inbox.mkdir()
    config = service_config(tmp_path, tiny_model_dir, watch={"inbox": inbox, "settle_s": 0.3}, output={"dir": out},
                            review={"enabled": True, "organization": "Test Hospital"})
    watch = services("watch", config, "-v", log="watch.log")
    watch.start()
    watch.wait_ready("watching ")
    drop_into(inbox, corpus)
    wait_for(lambda: len(journal_rows(spool, "id")) == len(corpus) and pending(spool) == 0, 240,
             "every hostile input finished", interval_s=0.25)
    assert watch.stop() == 0
    states = sorted(r["state"] for r in journal_rows(spool))
    assert states == sorted(["delivered"] * len(HOSTILE_NAMES) + ["skipped", "failed"]), states

    store = ReviewStore(spool, organization="Test Hospital")
    try:
        Accounts(store.db).add_user("alice", "Doe^Alice", "correct horse battery")
        token = Accounts(store.db).add_token("alice")
    finally:
        store.close()
    port = free_port()
    review_config = write_toml(tmp_path / "review.toml", {"spool": {"dir": spool, "min_free_bytes": 0},
                                                          "review": {"port": port, "organization": "Test Hospital"}})
    station = services("review", review_config, "-v", log="review.log")
    station.start()

    def up() -> bool:
        assert station.alive(), station.log_text()[-3000:]
        try:
            return _api(port, "/api/worklist", token)[0] == 200
        except OSError:
            return False

    wait_for(up, 120, "the review station", interval_s=0.25)
    _, worklist = _api(port, "/api/worklist", token)
    assert len(worklist["items"]) == len(HOSTILE_NAMES)
    for item in worklist["items"]:
        status, signed = _api(port, f"/api/reports/{item['ai_uid']}/sign", token, {"text": "no acute findings"})
        assert status == 201 and signed["uid"], signed
    assert station.stop() == 0

    assert_no_secret(watch.log, station.log, spool, inbox / "done", inbox / "failed")
    assert_withheld(watch.log_text())
    assert "is unlikely to represent the intended person name" in station.log_text()  # signing warned too


def test_hostile_names_reach_no_log_of_the_node_at_debug_in_json(tmp_path, tiny_model_dir, services):
    from pynetdicom import AE

    from tests.support.dicom import requested_contexts

    corpus = hostile_corpus(tmp_path / "staging", failing=False)
    out, spool, port = tmp_path / "out", tmp_path / "spool", free_port()
    config = service_config(tmp_path, tiny_model_dir, output={"dir": out}, node={"ae_title": "MEDBLIP", "port": port})
    node = services("node", config, "-v", "--log-format", "json", log="node.log")
    node.start()
    node.wait_ready("listening on")
    ae = AE(ae_title="MODALITY")
    for sop_class, syntax in requested_contexts(corpus):
        ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300  # a loaded machine is slow to fsync
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDBLIP")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(path).Status for path in corpus]
    finally:
        assoc.release()
    assert statuses == [0x0000] * len(corpus)
    wait_for(lambda: len(journal_rows(spool, "id")) == len(corpus) and pending(spool) == 0, 240,
             "every hostile instance finished", interval_s=0.25)
    assert node.stop() == 0
    assert sorted(r["state"] for r in journal_rows(spool)) == sorted(["delivered"] * len(HOSTILE_NAMES) + ["skipped"])
    assert_no_secret(node.log, spool)
    lines = [json.loads(line) for line in node.log_text().splitlines() if line.startswith("{")]
    assert any(line["level"] == "DEBUG" for line in lines)  # the scan covered debug output
    assert_withheld("\n".join(line["message"] for line in lines))


def test_a_pynetdicom_identifier_dump_keeps_its_tags_and_withholds_its_values(caplog):
    """``medblip pull -v`` and a node at debug log pynetdicom's dumps of identifiers: every element
    with its value in brackets, which is no quoted value."""
    import logging

    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import pretty_dataset

    from medblip_dicom.logsafety import protect_logs

    protect_logs()  # what every medblip command does first
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName, ds.PatientID, ds.OtherPatientIDs = "DOE JOHN", HOSTILE_ID, list(OTHER_IDS)
    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        for line in pretty_dataset(ds):
            logging.getLogger("pynetdicom.service_class").debug(line)
    assert "(0010,0010) PN '<value withheld>'" in caplog.text and "(0010,0020) LO '<value withheld>'" in caplog.text
    assert "# 1 PatientName" in caplog.text  # the element's description stays readable
    assert not [s for s in SECRETS if s in caplog.text]


# -- 2. one SOPInstanceUID, one report -------------------------------------------------------------


def two_images_one_uid(folder: Path) -> tuple[Path, Path, Path]:
    """A CT and an MR (different images, studies and series) that share one SOPInstanceUID, and a
    byte-identical copy of the CT under another file name."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    paths = []
    for name, template in (("a-ct.dcm", "CT_small.dcm"), ("b-mr.dcm", "MR_small.dcm")):
        ds = pydicom.dcmread(data_file(template))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    paths.append(folder / "c-ct-copy.dcm")
    shutil.copyfile(paths[0], paths[2])
    return paths[0], paths[1], paths[2]


def referenced_class(sr_path: Path) -> str:
    """The SOP class of the image an SR reports on (its evidence)."""
    sr = pydicom.dcmread(sr_path)
    return str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
               .ReferencedSOPSequence[0].ReferencedSOPClassUID)


def test_the_library_captions_the_first_image_of_a_sopinstanceuid_only(tmp_path, captioner):
    from medblip_dicom.api import CaptionResult, CaptionSkipped, caption_dicoms

    a, b, c = two_images_one_uid(tmp_path / "in")
    out = tmp_path / "out"
    outcomes = list(caption_dicoms([str(a), str(b), c.read_bytes()], model=captioner, output_dir=out, batch_size=2,
                                   workers=2))
    assert isinstance(outcomes[0], CaptionResult)
    assert isinstance(outcomes[1], CaptionSkipped) and outcomes[1].kind == "Duplicate" and outcomes[1].conflict
    assert outcomes[1].reason == f"SOPInstanceUID already seen in {a} with different content; not captioned"
    assert isinstance(outcomes[2], CaptionSkipped) and outcomes[2].kind == "Duplicate" and not outcomes[2].conflict
    assert outcomes[2].reason.startswith(f"same SOPInstanceUID and content as {a}")
    (sr,) = out.iterdir()
    assert referenced_class(sr) == CT_IMAGE_STORAGE  # the first image's report, not overwritten by the second


def test_medblip_caption_reports_the_second_image_of_a_sopinstanceuid_as_a_duplicate(tmp_path, tiny_model_dir,
                                                                                       capsys):
    from medblip_dicom.apps.main import main

    a, b, c = two_images_one_uid(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["caption", str(a), str(b), str(c), "--model", str(tiny_model_dir), "--out", str(out), "--device", "cpu",
               "--num-beams", "1", "--max-new-tokens", "8", "-q"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err  # an image got no report: not everything was done
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(a)]
    assert f"skipped {b}: SOPInstanceUID already seen in {a} with different content; not captioned" in captured.err
    assert f"skipped {c}: same SOPInstanceUID and content as {a}" in captured.err
    assert "captioned 1 of 3 files (0 failed, 2 skipped, 1 with a SOPInstanceUID already used by a different image)" \
        in captured.err
    (sr,) = out.iterdir()
    assert referenced_class(sr) == CT_IMAGE_STORAGE

    # The same instance twice is no conflict: captioned once, exit status 0.
    assert main(["caption", str(a), str(c), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out2"),
                 "--device", "cpu", "--num-beams", "1", "--max-new-tokens", "8", "-q"]) == 0
    assert len(list((tmp_path / "out2").iterdir())) == 1


@pytest.fixture
def ray_local():
    ray = pytest.importorskip("ray")
    import os

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    owned = not ray.is_initialized()
    if owned:
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
                 log_to_driver=False)
    yield ray
    if owned:
        ray.shutdown()


def test_medblip_batch_gives_the_second_image_of_a_sopinstanceuid_a_duplicate_row(tmp_path, tiny_model_dir, ray_local):
    import pandas as pd

    from medblip_dicom.apps.main import main

    a, b, c = two_images_one_uid(tmp_path / "in")
    out, results = tmp_path / "out", tmp_path / "results.csv"
    rc = main(["batch", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(out), "--results",
               str(results), "--device", "cpu", "--dtype", "float32", "--num-beams", "1", "--max-new-tokens", "8",
               "--per-series", "each", "-q"])
    table = pd.read_csv(results, dtype=str, keep_default_na=False).set_index("path")
    assert rc == 1
    assert table.loc[str(a), "status"] == "captioned"
    assert (table.loc[str(b), "status"], table.loc[str(b), "kind"]) == ("skipped", "Duplicate")
    assert table.loc[str(b), "reason"] == f"SOPInstanceUID already seen in {a} with different content; not captioned"
    assert (table.loc[str(c), "status"], table.loc[str(c), "kind"]) == ("skipped", "Duplicate")
    (sr,) = out.iterdir()
    assert referenced_class(sr) == CT_IMAGE_STORAGE


def test_the_services_skip_the_second_image_of_a_sopinstanceuid_naming_the_first_job(tmp_path, tiny_model_dir,
                                                                                      services):
    a, b, c = two_images_one_uid(tmp_path / "staging")
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    inbox.mkdir()
    config = service_config(tmp_path, tiny_model_dir, watch={"inbox": inbox, "settle_s": 0.3}, output={"dir": out})
    watch = services("watch", config)
    watch.start()
    watch.wait_ready("watching ")
    for i, path in enumerate((a, b, c), start=1):  # one after the other: the arrival order is the rule's order
        drop_into(inbox, [path])
        wait_for(lambda: len(journal_rows(spool, "id")) == i, 60, f"{path.name} admitted", interval_s=0.1)
    wait_for(lambda: pending(spool) == 0, 120, "every job finished", interval_s=0.25)
    assert watch.stop() == 0
    first, second, copy = journal_rows(spool)
    assert (first["name"], first["state"]) == (a.name, "delivered")
    assert (second["state"], second["error_class"]) == ("skipped", "Duplicate")
    assert second["reason"] == f"SOPInstanceUID already seen in job {first['id']} with different content; not captioned"
    assert (copy["state"], copy["error_class"]) == ("skipped", "Duplicate")
    assert copy["reason"] == f"duplicate of job {first['id']} (same SOPInstanceUID and content)"
    reason_file = inbox / "done" / f"{b.name}.reason.txt"
    assert f"job {first['id']} with different content" in reason_file.read_text()
    (sr,) = out.iterdir()
    assert referenced_class(sr) == CT_IMAGE_STORAGE
