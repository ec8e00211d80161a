"""Fixtures every test may use (defined in :mod:`tests.support.fixtures`).

The weights-digest cache goes to a folder of the test session, never the user's ~/.cache.
"""

from __future__ import annotations

import os
import tempfile

from tests.support.fixtures import captioner, td, tiny_model_dir, tool, validate_sr  # noqa: F401 - fixtures

os.environ.setdefault("MEDBLIP_CACHE_DIR", tempfile.mkdtemp(prefix="medblip-test-cache-"))
