"""Fixtures of the attack tests: the services as processes, the review station, the tiny model.

Every test here attacks a running service (or the library) the way an outsider, a careless sender
or a reviewer's keyboard would: 127.0.0.1 only, bounded loops, every process it starts stopped.
"""

from __future__ import annotations

from tests.support.review import client, review_spool  # noqa: F401 - fixtures
from tests.support.fixtures import (  # noqa: F401 - fixtures
    dciodvfy, figures, no_leaked_threads, orthanc_factory, run_service, services, weights_sha256,
)
