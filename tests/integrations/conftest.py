"""Fixtures of the deployment tests (the helpers live in integration_helpers.py)."""

from __future__ import annotations


from integration_helpers import mixed_study, no_leaked_threads, orthanc_factory, run_service  # noqa: F401 - fixtures
