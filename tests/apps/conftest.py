"""Fixtures of the command tests that start peers (defined in :mod:`tests.support.fixtures`)."""

from __future__ import annotations

from tests.support.fixtures import no_leaked_threads, orthanc_factory  # noqa: F401 - fixtures
