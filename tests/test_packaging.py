"""The distribution builds without setuptools warnings and holds what the code reads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out), "-v"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("medblip_dicom-*.whl")
    return wheel, proc.stdout + proc.stderr


def test_the_build_prints_no_warnings(wheel_build):
    _, log = wheel_build
    warnings = [line.strip() for line in log.splitlines()
                if ("Warning" in line or "would be ignored" in line or "deprecated" in line.lower())
                and "byte-compiling is disabled" not in line]
    assert not warnings, "the build warns:\n" + "\n".join(warnings[:10])


def test_the_wheel_holds_the_caption_data_and_one_top_level_package(wheel_build):
    wheel, _ = wheel_build
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("medblip_dicom/py.typed", "medblip_dicom/training/roco_captions/captions.txt",
                   "medblip_dicom/training/roco_captions/licences.txt", "medblip_dicom/apps/main.py",
                   "medblip_dicom/integrations/spool/journal.py", "medblip_dicom/integrations/review/templates/report.html",
                   "medblip_dicom/integrations/review/templates/review.js",
                   "medblip_dicom/deid/recipes/basic.dicom", "medblip_dicom/deid/recipes/clean-descriptors.dicom"):
        assert needed in names, needed
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"medblip_dicom"}, tops
