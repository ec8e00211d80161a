"""Fixtures of the reliability tests: the service as a process, figures, Orthanc.

Scale: MEDBLIP_RELIABILITY_SCALE (default :data:`tests.support.figures.DEFAULT_SCALE`; 1.0 = the
full-size figures the reliability page states). Figures: printed at the end of each test (``pytest -s``) and written to the
JSON file named by MEDBLIP_RELIABILITY_REPORT, if set.
"""

from __future__ import annotations

from tests.support.fixtures import (  # noqa: F401 - fixtures
    dciodvfy, figures, no_leaked_threads, orthanc_factory, services, weights_sha256,
)
