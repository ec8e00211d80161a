"""Security: who may send, over what, where files may land, and what a model file may do.

- a calling AE title not on the allow-list is rejected; with TLS required a plain connection is
  refused; with no host configured the node listens on 127.0.0.1 only (checked on the running
  service's socket);
- crafted UIDs (``../``, absolute paths, over-long values) cannot make the node or the watch
  folder write outside their folders;
- a model directory or a training checkpoint holding pickled code is refused, and the code never
  runs;
- none of these logs (nor reason files, journals) hold the inputs' patient name or ID (every test
  of this folder scans its own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.support.checks import check_output_folder, validate_srs
from tests.support.dicom import load_template
from tests.support.env import wait_for
from tests.support.journal import journal_rows, pending
from tests.support.privacy import scan_for_patient_data
from tests.support.services import listening_addresses, service_config

from tests.support.env import free_port, run_tool
from tests.support.services import make_certificates


def test_allow_list_tls_and_loopback_on_the_running_service(tmp_path: Path, tiny_model_dir, services, tool, figures,
                                                             dciodvfy):
    echoscu, storescu, openssl = tool("echoscu"), tool("storescu"), tool("openssl")
    certs = make_certificates(tmp_path / "certs", openssl)
    out, spool, port = tmp_path / "out", tmp_path / "spool", free_port()
    config = service_config(tmp_path, tiny_model_dir, output={"dir": out},
                            node={"ae_title": "MEDBLIP", "port": port, "allowed_calling_aets": ["CT01"],
                                  "tls": {"cert": str(certs["server.pem"]), "key": str(certs["server.key"]),
                                          "client_ca": str(certs["ca.pem"])}})
    assert "host" not in config.read_text()  # the default bind address is what is tested
    service = services("node", config)
    service.start()
    service.wait_ready("listening on")
    addresses = listening_addresses(port)
    assert addresses == ["127.0.0.1"], f"the node listens on {addresses}, not only on loopback"

    source = tmp_path / "ct.dcm"
    ds = load_template("CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(source, enforce_file_format=True)
    tls = ["+tls", str(certs["client.key"]), str(certs["client.pem"]), "+cf", str(certs["ca.pem"])]
    target = ["-aec", "MEDBLIP", "127.0.0.1", str(port)]
    plain_echo = run_tool([echoscu, "-aet", "CT01", *target])
    plain_store = run_tool([storescu, "-aet", "CT01", *target, str(source)])
    intruder = run_tool([storescu, *tls, "-aet", "INTRUDER", *target, str(source)])
    no_client_cert = run_tool([echoscu, "+tla", "+cf", str(certs["ca.pem"]), "-aet", "CT01", *target])
    allowed = run_tool([storescu, *tls, "-aet", "CT01", *target, str(source)])
    assert plain_echo.returncode != 0 and plain_store.returncode != 0, "a plain connection got through"
    assert intruder.returncode != 0 and "Calling AE Title Not Recognized" in intruder.stdout + intruder.stderr
    assert no_client_cert.returncode != 0
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    wait_for(lambda: pending(spool) == 0 and list(out.glob("*.dcm")), 120, "the allowed instance's SR")
    assert service.stop() == 0
    rows = journal_rows(spool)
    assert [(r["sop_instance_uid"], r["state"]) for r in rows] == [(str(ds.SOPInstanceUID), "delivered")]
    text = service.log_text()
    assert text.count("TLS handshake failed") >= 3  # plain echo, plain store, no client certificate
    assert "rejected" in text and "INTRUDER" in text
    validate_srs(out.glob("*.dcm"))
    scanned = scan_for_patient_data(service.log, spool)
    figures.record("security_network", listens_on=addresses, plain_refused=2, not_on_allow_list_refused=1,
                   no_client_certificate_refused=1, allowed_tls_stored=1, files_scanned_for_phi=scanned)


def _crafted(template: str, folder: Path, name: str, **uids: str) -> Path:
    ds = load_template(template)
    fresh = generate_uid()
    ds.SOPInstanceUID = fresh
    ds.file_meta.MediaStorageSOPInstanceUID = fresh
    for key, value in uids.items():
        setattr(ds, key, value)
        if key == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=False)
    return path


def test_crafted_uids_cannot_write_outside_the_folders(tmp_path: Path, tiny_model_dir, services, figures,
                                                       dciodvfy):
    """SOP, study and series UIDs holding ``../``, absolute paths and over-long values, sent to the
    node (which names spool files after the SOPInstanceUID, and keeps inputs) and dropped into the
    watch folder: every file written stays inside the service's own folders."""
    from pynetdicom import AE

    site, outside, staging = tmp_path / "site", tmp_path / "outside", tmp_path / "staging"
    outside.mkdir()
    stray = Path("/tmp") / f"mbp-{uuid.uuid4().hex[:8]}"  # an absolute target short enough for a UID field
    long_value = "1." + "2" * 10_000
    rel_up = "../" * 12 + str(outside).lstrip("/")
    node_uids = [  # the Affected SOP Instance UID must fit 64 characters on the wire
        {"SOPInstanceUID": "../../../../outside/node-up"},
        {"SOPInstanceUID": str(stray)},
        {"SOPInstanceUID": ".."},
        {"SOPInstanceUID": "a/../../../../b"},
        {"StudyInstanceUID": rel_up + "/study", "SeriesInstanceUID": str(outside / "series")},
        {"StudyInstanceUID": long_value[:300]},
    ]
    watch_uids = [
        {"SOPInstanceUID": rel_up + "/watch-up"},
        {"SOPInstanceUID": str(outside / "watch-abs")},
        {"SOPInstanceUID": long_value},
        {"SOPInstanceUID": "..\\..\\..\\windows"},  # a backslash makes it multi-valued
        {"SeriesInstanceUID": long_value, "StudyInstanceUID": str(outside / "study")},
    ]
    node_files = [_crafted("MR_small.dcm", staging / "node", f"node-{i}.dcm", **u) for i, u in enumerate(node_uids)]
    watch_files = [_crafted("CT_small.dcm", staging / "watch", f"watch-{i}.dcm", **u)
                   for i, u in enumerate(watch_uids)]
    good = _crafted("CT_small.dcm", staging / "node", "good.dcm")

    # The node, keeping its inputs (spool files named after the SOPInstanceUID), and a watch folder
    # sharing its spool.
    spool, out, inbox, port = site / "spool", site / "out", site / "inbox", free_port()
    site.mkdir()
    config = service_config(site, tiny_model_dir, output={"dir": out},
                            node={"ae_title": "MEDBLIP", "port": port, "keep_inputs": True},
                            watch={"inbox": inbox, "settle_s": 0.3})
    node = services("node", config, log="node.log")
    node.start()
    node.wait_ready("listening on")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDBLIP")
    statuses = {}
    try:
        for path in [*node_files, good]:
            statuses[path.name] = getattr(assoc.send_c_store(path), "Status", None)
    finally:
        assoc.release()
    assert statuses["good.dcm"] == 0x0000
    stored = sum(s == 0x0000 for s in statuses.values())
    wait_for(lambda: len(journal_rows(spool, "id")) == stored and pending(spool) == 0, 120, "the node's jobs")
    watch = services("watch", config, log="watch.log")
    watch.start()
    watch.wait_ready("watching ")
    inbox.mkdir(exist_ok=True)
    for path in watch_files:
        os.rename(path, inbox / path.name)
    wait_for(lambda: len(journal_rows(spool, "id")) == stored + len(watch_files) and pending(spool) == 0, 120,
             "the watch folder's jobs")
    assert node.stop() == 0 and watch.stop() == 0

    allowed = [site, staging]
    strays = [p for p in tmp_path.rglob("*") if p.is_file() and not any(a in p.parents for a in allowed)
              and p.parent != tmp_path]
    assert not strays, f"files written outside the service's folders: {strays}"
    assert not any(outside.iterdir()), list(outside.iterdir())
    assert not list(stray.parent.glob(stray.name + "*")), "a crafted absolute UID wrote into /tmp"
    rows = journal_rows(spool)
    crafted = [r for r in rows if r["name"] != f"{good_uid(good)}.dcm"]
    assert all(r["state"] == "failed" for r in crafted), [(r["name"][:80], r["state"], r["reason"]) for r in crafted]
    assert all("not a valid DICOM UID" in r["reason"] for r in crafted), [r["reason"][:200] for r in crafted]
    for r in crafted:  # quarantined inside the spool's or the inbox's failed/ folder, with a reason
        final = Path(r["final_path"]).resolve()
        assert any(f in final.parents for f in ((spool / "failed").resolve(), (inbox / "failed").resolve())), final
        assert final.with_name(final.name + ".reason.txt").exists()
    srs = check_output_folder(out)
    assert list(srs) == [good_uid(good)]
    validate_srs(out.glob("*.dcm"))
    scanned = scan_for_patient_data(node.log, watch.log, spool, inbox / "failed")
    figures.record("security_crafted_uids", node_crafted=len(node_files), node_refused_on_the_wire=len(node_files)
                   + 1 - stored, watch_crafted=len(watch_files), quarantined=len(crafted), written_outside=0,
                   files_scanned_for_phi=scanned)


def good_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pickled code ran')",))


def _malicious_pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state": _Payload(marker)}, path)
    return path


def test_model_with_pickled_code_is_refused(tmp_path: Path, tiny_model_dir, figures):
    from medblip_dicom.captioner import Captioner
    from medblip_dicom.errors import ModelLoadError

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, evil, ignore=shutil.ignore_patterns("*.safetensors"))
    _malicious_pickle(evil / "pytorch_model.bin", marker)
    # The file really is dangerous: an unrestricted unpickler runs it (in a throw-away process).
    proc = subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
                           str(evil / "pytorch_model.bin")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and marker.exists(), proc.stderr
    marker.unlink()

    with pytest.raises(ModelLoadError) as refused:
        Captioner.load(evil, device="cpu", dtype="float32")
    assert "model.safetensors" in str(refused.value)
    assert not marker.exists()

    # The services refuse it at start, with one line and exit status 2.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cli = subprocess.run([sys.executable, "-m", "medblip_dicom", "watch", str(inbox), "--once", "--model", str(evil),
                          "--out", str(tmp_path / "out"), "--spool", str(tmp_path / "spool"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "not a usable model directory" in cli.stderr and "Traceback" not in cli.stderr
    assert not marker.exists()

    # Beside real safetensors weights, a planted pickle is never opened.
    mixed = tmp_path / "mixed-model"
    shutil.copytree(tiny_model_dir, mixed)
    _malicious_pickle(mixed / "pytorch_model.bin", marker)
    Captioner.load(mixed, device="cpu", dtype="float32")
    assert not marker.exists()
    figures.record("security_pickled_model", refused=True, code_ran=False, service_exit_status=cli.returncode)


def test_checkpoint_with_pickled_code_is_refused_on_resume(tmp_path: Path, tiny_model_dir, capsys, figures):
    from medblip_dicom.apps.main import main
    from medblip_dicom.training.checkpoints import latest_checkpoint
    from medblip_dicom.training.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", layout="roco", sizes={"train": 8, "validation": 4, "test": 4})
    run = tmp_path / "run"
    common = ["train", "--data", str(data), "--base-model", str(tiny_model_dir), "--out", str(run), "--batch-size",
              "4", "--save-every", "1", "--device", "cpu", "--max-length", "24", "--seed", "1", "-q"]
    assert main([*common, "--epochs", "1"]) == 0
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert checkpoint is not None and (checkpoint / "optimizer.bin").exists()
    marker = tmp_path / "PWNED"
    _malicious_pickle(checkpoint / "optimizer.bin", marker)  # a planted optimizer state
    capsys.readouterr()

    assert main([*common, "--epochs", "2", "--resume"]) == 1
    err = capsys.readouterr().err
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert "Traceback" not in err, err
    line = next(line for line in err.splitlines() if line.startswith("medblip train:"))
    assert line.startswith("medblip train: refusing to resume from") and "it would call exec" in line, line
    figures.record("security_pickled_checkpoint", refused=True, code_ran=False, message=line[:200])
