"""Fixtures of the deployment tests (the helpers live in integration_helpers.py)."""

from __future__ import annotations

import threading
import time

import pytest
from integration_helpers import mixed_study, orthanc_factory, run_service  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread running (servers, observers, workers must be stopped)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, "threads left running: " + ", ".join(sorted(t.name for t in leaked))
