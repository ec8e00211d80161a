"""Headless Chromium through selenium, for the tests that drive a real browser (the review station,
the OHIF viewer). Debian's chromium and chromium-driver; Playwright's own browser download does not
work on these machines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import in_ci

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Flags that keep Chromium headless, quiet on a closed network and out of the user's profile.
BASE_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,900")


def browser(profile: Path, *, what: str, extra_flags: Sequence[str] = (), capture_console: bool = False) -> Any:
    """A selenium Chrome driver with a fresh profile in `profile`; skip with the reason when the
    browser, its driver or selenium is missing (fail under CI=true, which installs them). `what`
    names the test in that sentence."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        message = f"{what} needs {', '.join(missing)} (Debian packages chromium, chromium-driver)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*BASE_FLAGS, f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(arg)
    if capture_console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
