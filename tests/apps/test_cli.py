"""The ``medblip`` command as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from medblip_dicom.apps.main import main


def test_caption_chest_xray_writes_a_valid_sr(tiny_model_dir, td, tmp_path, capsys, validate_sr):
    out = tmp_path / "srs"
    rc = main(["caption", td("RG1_UNCI.dcm"), "--model", str(tiny_model_dir), "--out", str(out),
               "--device", "cpu", "--dtype", "float32", "--num-beams", "1", "--max-new-tokens", "10", "-q"])
    assert rc == 0
    stdout, stderr = capsys.readouterr()
    source, sr_path, caption = stdout.strip().split("\t")
    assert source == td("RG1_UNCI.dcm") and caption
    assert "captioned 1 of 1 files (0 failed, 0 skipped)" in stderr
    validate_sr(sr_path)
    assert Path(sr_path).parent == out
    assert pydicom.dcmread(sr_path).ContentSequence  # a real tree, read back


def test_folder_is_searched_recursively_and_non_images_skipped(tiny_model_dir, td, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    (inbox / "a" / "b").mkdir(parents=True)
    shutil.copy(td("CT_small.dcm"), inbox / "a" / "ct")
    shutil.copy(td("MR_small.dcm"), inbox / "a" / "b" / "mr.dcm")
    shutil.copy(td("test-SR.dcm"), inbox / "report.dcm")
    (inbox / ".hidden").write_text("ignored")
    rc = main(["caption", str(inbox), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "-q"])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    assert len(stdout.strip().splitlines()) == 2
    assert "skipped " + str(inbox / "report.dcm") in stderr
    assert "captioned 2 of 3 files (0 failed, 1 skipped)" in stderr
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2


def test_failed_file_is_named_and_exit_status_non_zero(tiny_model_dir, td, tmp_path, capsys):
    bad = tmp_path / "broken.dcm"  # another instance (a SOPInstanceUID and series of its own), truncated
    ds = pydicom.dcmread(td("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(bad, enforce_file_format=True)
    bad.write_bytes(bad.read_bytes()[:5000])
    rc = main(["caption", td("CT_small.dcm"), str(bad), td("test-SR.dcm"), "--model", str(tiny_model_dir), "-q"])
    _, stderr = capsys.readouterr()
    assert rc == 1
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 2  # a named non-image counts as failed, not skipped
    assert any(str(bad) in line and "truncated" in line for line in failed)
    assert "captioned 1 of 3 files (2 failed, 0 skipped)" in stderr


def test_missing_model_is_one_line_and_exit_2(td, tmp_path, capsys):
    rc = main(["caption", td("CT_small.dcm"), "--model", str(tmp_path / "no-model"), "-q"])
    _, stderr = capsys.readouterr()
    assert rc == 2
    assert stderr.strip().count("\n") == 0 and "does not exist" in stderr


def test_generation_flags_are_validated(tiny_model_dir, td, capsys):
    rc = main(["caption", td("CT_small.dcm"), "--model", str(tiny_model_dir), "--min-new-tokens", "9",
               "--max-new-tokens", "3"])
    assert rc == 2 and "min_new_tokens" in capsys.readouterr().err


def test_help_is_fast_and_imports_nothing_heavy():
    code = "import sys, medblip_dicom.apps.main; print(sorted(m for m in ('torch', 'transformers', 'highdicom') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    exe = shutil.which("medblip", path=str(Path(sys.executable).parent)) or shutil.which("medblip")
    assert exe, "the console script medblip is not installed"
    started = time.perf_counter()
    proc = subprocess.run([exe, "caption", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--batch-size" in proc.stdout and "examples:" in proc.stdout
    assert time.perf_counter() - started < 5


def test_no_top_level_training_or_integrations_module(tmp_path):
    code = ("import importlib.util as u; "
            "print(u.find_spec('training') is None, u.find_spec('integrations') is None, "
            "u.find_spec('medblip_dicom.training') is not None, u.find_spec('medblip_dicom.integrations') is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["True", "True", "True", "True"]


def test_a_real_process_leaves_at_once_with_every_line_and_file_complete(tiny_model_dir, td, tmp_path, validate_sr):
    """`medblip caption` ends with os._exit (no interpreter teardown): nothing it printed or wrote is lost."""
    out = tmp_path / "srs"
    proc = subprocess.run([sys.executable, "-m", "medblip_dicom", "caption", td("CT_small.dcm"), td("MR_small.dcm"),
                           "--model", str(tiny_model_dir), "--out", str(out), "--device", "cpu", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.count("\t") == 2 for line in lines), proc.stdout + proc.stderr
    assert "captioned 2 of 2 files" in proc.stderr, proc.stderr
    for line in lines:
        validate_sr(line.split("\t")[1])
    failing = subprocess.run([sys.executable, "-m", "medblip_dicom", "caption", str(tmp_path / "missing.dcm"),
                              "--model", str(tiny_model_dir), "-q"], capture_output=True, text=True, timeout=300)
    assert failing.returncode == 1 and "FAILED" in failing.stderr and "no such file" in failing.stderr, \
        (failing.returncode, failing.stdout, failing.stderr)
