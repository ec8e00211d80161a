"""Shared pytest fixtures; the conftest files import the ones their folder uses.

Session fixtures build the tiny BLIP model once (offline, from a config) and load it once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.dicom import testdata, validate_sr as _validate_sr
from tests.support.env import require_tool
from tests.support.figures import Figures
from tests.support.orthanc import Orthanc
from tests.support.privacy import PATIENT_ID, PATIENT_NAME
from tests.support.services import ServiceProcess


@pytest.fixture(scope="session")
def tool():
    """Fixture form of :func:`require_tool`."""
    return require_tool


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP captioning model + processor, built locally from a config (no download)."""
    from medblip_dicom.training.demo_model import build_blip_model

    return build_blip_model(tmp_path_factory.mktemp("models") / "tiny-blip", size="tiny", seed=0)


@pytest.fixture(scope="session")
def captioner(tiny_model_dir: Path):
    """The tiny model loaded once for the session, in float32 on the CPU for exact repeatability."""
    from medblip_dicom.captioner import Captioner
    from medblip_dicom.generation import GenerationSettings

    return Captioner.load(tiny_model_dir, device="cpu", dtype="float32",
                          settings=GenerationSettings(num_beams=2, max_new_tokens=12, min_new_tokens=3))


@pytest.fixture(scope="session")
def td():
    """Fixture form of :func:`testdata`."""
    return testdata


@pytest.fixture(scope="session")
def validate_sr():
    """Fixture form of :func:`tests.support.dicom.validate_sr`."""
    return _validate_sr


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Make Orthanc instances (not started); all are stopped in teardown."""
    made: list[Orthanc] = []

    def make(**kwargs: Any) -> Orthanc:
        pacs = Orthanc(tmp_path / f"orthanc{len(made)}", **kwargs)
        made.append(pacs)
        return pacs

    yield make
    for pacs in made:
        pacs.stop()


@pytest.fixture(scope="session")
def mixed_study(tmp_path_factory: pytest.TempPathFactory, td) -> tuple[str, list[Path]]:
    """CT, MR, a JPEG 2000 radiograph and the uncompressed chest CR re-issued into one study of
    one (invented) patient. Pixel data and transfer syntaxes are kept as they are."""
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("mixed-study")
    study_uid = generate_uid()
    paths = []
    for i, name in enumerate(["CT_small.dcm", "MR_small.dcm", "RG1_J2KR.dcm", "RG1_UNCI.dcm"], start=1):
        ds = pydicom.dcmread(td(name))
        ds.StudyInstanceUID = study_uid
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.AccessionNumber = "ACC0001"
        ds.InstanceNumber = i
        path = folder / f"{i}-{name}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


@pytest.fixture
def run_service(captioner) -> Iterator[Callable[..., Any]]:
    """Start Services with the session's tiny captioner; every one is stopped in teardown."""
    from medblip_dicom.integrations.service.assembly import Service

    started: list[Service] = []

    def start(config, *, watch: bool = False, node: bool = False) -> Service:
        service = Service(config, watch=watch, node=node, captioner=captioner)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread running (servers, observers, workers, senders must be stopped)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, "threads left running: " + ", ".join(sorted(t.name for t in leaked))


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The reliability tests' figures, collected for the whole session."""
    return Figures()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Make service processes (``medblip watch|node --config FILE``); all are gone after the test."""
    made: list[ServiceProcess] = []

    def make(command: str, config: Path, *args: str, log: str | None = None) -> ServiceProcess:
        service = ServiceProcess(command, config, tmp_path / (log or f"{command}{len(made)}.log"), *args)
        made.append(service)
        return service

    yield make
    for service in made:
        service.cleanup()


@pytest.fixture(scope="session")
def weights_sha256(captioner) -> str:
    """The tiny model's weights digest: with a source UID it gives the SR's UID (reports are idempotent)."""
    return captioner.identity.weights_sha256


@pytest.fixture(scope="session")
def dciodvfy(tool) -> str:
    return tool("dciodvfy")
