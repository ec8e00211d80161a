"""Fixtures of the DICOMweb tests (defined in :mod:`tests.support.fixtures`)."""

from __future__ import annotations

from tests.support.fixtures import (  # noqa: F401 - fixtures
    no_leaked_threads, orthanc_factory, run_service, services, weights_sha256,
)
