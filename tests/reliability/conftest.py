"""Fixtures of the reliability tests (issue 5): the service as a process, figures, Orthanc.

Scale: MEDBLIP_RELIABILITY_SCALE (default :data:`reliability_helpers.DEFAULT_SCALE`; 1.0 = the
numbers of issue 5). Figures: printed at the end of each test (``pytest -s``) and written to the
JSON file named by MEDBLIP_RELIABILITY_REPORT, if set.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Orthanc, free ports and openssl certificates come from the deployment tests' helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integrations"))

from integration_helpers import no_leaked_threads, orthanc_factory  # noqa: E402,F401 - fixtures
from reliability_helpers import Figures, ServiceProcess  # noqa: E402


@pytest.fixture(scope="session")
def figures() -> Figures:
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
