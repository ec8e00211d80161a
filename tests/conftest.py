"""Shared fixtures: a tiny BLIP model built offline, real DICOM test files, external tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Path of an external program; skip the test when it is missing, but fail in CI.

    CI installs dcmtk and dicom3tools, so a missing tool there is a set-up bug, not a skip.
    """
    from medblip_dicom.doctor import find_system_tool

    path = find_system_tool(name)  # dcmtk's echoscu, not pynetdicom's app of the same name
    if path is None:
        message = f"{name} is not installed (Debian packages dcmtk / dicom3tools)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tool():
    """Fixture form of :func:`require_tool`."""
    return require_tool


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP captioning model + processor, built locally from a config (no download)."""
    from medblip_dicom.demo_model import build_blip_model

    return build_blip_model(tmp_path_factory.mktemp("models") / "tiny-blip", size="tiny", seed=0)


@pytest.fixture(scope="session")
def captioner(tiny_model_dir: Path):
    """The tiny model loaded once for the session, in float32 on the CPU for exact repeatability."""
    from medblip_dicom.captioner import Captioner, GenerationSettings

    return Captioner.load(tiny_model_dir, device="cpu", dtype="float32",
                          settings=GenerationSettings(num_beams=2, max_new_tokens=12, min_new_tokens=3))


def testdata(name: str) -> str:
    """Path of a file from pydicom's test data or the pydicom-data package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"test file {name} not found; is pydicom-data installed?"
    return str(path)


@pytest.fixture(scope="session")
def td():
    """Fixture form of :func:`testdata`."""
    return testdata


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The error lines dciodvfy reports for a file (warnings are not errors)."""
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture(scope="session")
def validate_sr():
    """Check an SR file with dciodvfy (zero errors) and dsrdump (reads it); return dsrdump's text."""

    def check(path: str | Path) -> str:
        errors = dciodvfy_errors(path)
        assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)
        exe = require_tool("dsrdump")
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"dsrdump could not read {path}: {proc.stderr}"
        return proc.stdout

    return check
