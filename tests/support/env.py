"""The test environment: CI or not, external tools, free ports, polling with a deadline.

Every server and process a test starts talks to 127.0.0.1 only and is stopped in teardown.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from medblip_dicom.systemtools import find_system_tool


def in_ci() -> bool:
    """True under CI=true: there a missing tool is a set-up bug (a failure), not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Path of an external program; skip the test when it is missing, but fail in CI.

    CI installs dcmtk and dicom3tools, so a missing tool there is a set-up bug, not a skip.
    """
    path = find_system_tool(name)  # dcmtk's echoscu, not pynetdicom's app of the same name
    if path is None:
        message = f"{name} is not installed (Debian packages dcmtk / dicom3tools)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools: TCP_NODELAY on (dcmtk reads it from the environment)."""
    return dict(os.environ, TCP_NODELAY="1")


def run_tool(args: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a tool; its output is decoded as UTF-8 with undecodable bytes replaced (tools print DICOM
    text in the file's character set, which a test must read, not crash on)."""
    return subprocess.run(args, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout_s, env=dcmtk_env())
