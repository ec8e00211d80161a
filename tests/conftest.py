"""Fixtures every test may use (defined in :mod:`tests.support.fixtures`).

The weights-digest cache goes to a folder of the test session, never the user's ~/.cache. tqdm's
monitor thread is off: the leak check of the service tests would otherwise see it start when a
command run in-process shows a progress bar (it exits by itself 10 s after the last bar).
"""

from __future__ import annotations

import os
import tempfile

from tests.support.fixtures import captioner, td, tiny_model_dir, tool, validate_sr  # noqa: F401 - fixtures

import tqdm

os.environ.setdefault("MEDBLIP_CACHE_DIR", tempfile.mkdtemp(prefix="medblip-test-cache-"))
tqdm.tqdm.monitor_interval = 0
