"""Fixtures of the review station's tests (defined in :mod:`tests.support.review`)."""

from __future__ import annotations

from tests.support.fixtures import no_leaked_threads, orthanc_factory, run_service  # noqa: F401 - fixtures
from tests.support.review import client, review_spool  # noqa: F401 - fixtures
