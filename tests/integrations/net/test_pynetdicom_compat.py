"""pynetdicom's private hooks: present in the installed release, and the pin names that release."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pynetdicom

from medblip_dicom.integrations.net import pynetdicom_compat


def test_every_private_hook_exists_in_the_installed_pynetdicom():
    pynetdicom_compat.check.cache_clear()
    pynetdicom_compat.check()  # raises, naming each missing hook, on a release that moved them


def test_the_installed_release_is_the_tested_series_and_the_pin_allows_no_other():
    assert pynetdicom.__version__.startswith(pynetdicom_compat.TESTED_SERIES + ".")
    project = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("pynetdicom")]
    major, minor = pynetdicom_compat.TESTED_SERIES.split(".")
    assert pin == f"pynetdicom>={major}.{minor},<{major}.{int(minor) + 1}"


def test_a_release_without_a_hook_is_refused_in_one_sentence(monkeypatch):
    from pynetdicom import AE

    from medblip_dicom.errors import MissingDependencyError

    monkeypatch.delattr(AE, "_create_socket")
    pynetdicom_compat.check.cache_clear()
    try:
        try:
            pynetdicom_compat.check()
        except MissingDependencyError as exc:
            message = str(exc)
        else:
            raise AssertionError("check() accepted a pynetdicom without AE._create_socket")
    finally:
        pynetdicom_compat.check.cache_clear()
    assert "AE._create_socket" in message and "pynetdicom==3.0.*" in message and "\n" not in message
