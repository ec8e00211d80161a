"""Fixtures every test may use (defined in :mod:`tests.support.fixtures`).

The weights-digest cache goes to a folder of the test session, never the user's ~/.cache. tqdm's
monitor thread is off: the leak check of the service tests would otherwise see it start when a
command run in-process shows a progress bar (it exits by itself 10 s after the last bar).
"""

from __future__ import annotations

import os
import tempfile

from tests.support.fixtures import captioner, td, tiny_model_dir, tool, validate_sr  # noqa: F401 - fixtures
from tests.support.families import family_model  # noqa: F401 - fixture

import pytest
import tqdm

os.environ.setdefault("MEDBLIP_CACHE_DIR", tempfile.mkdtemp(prefix="medblip-test-cache-"))
tqdm.tqdm.monitor_interval = 0



@pytest.fixture(autouse=True)
def _torch_threads_unchanged():
    """Fail a test whose code changed this process's torch thread count (a Ray stage run in the
    driver once did): later tests, the training resume test among them, would compute otherwise."""
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test changed torch's thread count from {before} to {after}")
