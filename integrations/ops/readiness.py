"""What ``/healthz`` and ``/readyz`` check (:mod:`.http` serves them): each check is ``True`` or the
reason it fails, so the JSON body says which one failed and why.

- health: the process runs and has not stopped itself on an error; each of its threads is alive;
  its worker process, when it has one, is alive. A failing health check means: restart it.
- readiness: the model is loaded; the spool folder is writable; its disk is above ``[spool]
  min_free_bytes``; the destination, when there is one, accepted an association at the last try
  (or none was needed yet). A failing readiness check means: do not send to it now.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import threading
from typing import Any, Protocol


class Service(Protocol):
    """What the checks read of a :class:`~medblip_dicom.integrations.service.assembly.Service`."""

    error: BaseException | None
    stopped: threading.Event
    threads: list[threading.Thread]
    worker_process: Any
    worker: Any
    spool: Any
    delivery: Any


def health(service: Service) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    checks["running"] = True if service.error is None and not service.stopped.is_set() else (
        f"stopped on {type(service.error).__name__}: {service.error}" if service.error else "stopped")
    dead = [t.name for t in service.threads if not t.is_alive()]
    checks["threads"] = True if not dead else "not running: " + ", ".join(dead)
    if service.worker_process is not None:
        checks["worker_process"] = True if service.worker_process.is_alive() else \
            f"exited with code {service.worker_process.exitcode}"
    return checks


def ready(service: Service) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    if service.worker_process is not None:
        checks["model"] = True if service.worker_process.is_alive() else "the worker process is not running"
    else:
        checks["model"] = True if service.worker is not None else "not loaded"
    spool = service.spool
    if spool is None:
        return {**checks, "spool_writable": "the spool is not open"}
    probe = spool.root / "tmp" / f".ready-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"ok")
        checks["spool_writable"] = True
    except OSError as exc:
        checks["spool_writable"] = f"cannot write in {spool.root / 'tmp'} ({exc.strerror or exc})"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    free, floor = shutil.disk_usage(spool.root).free, spool.space.min_free_bytes
    checks["disk"] = True if free >= floor else f"{free // 2**20} MiB free, below [spool] min_free_bytes " \
                                                f"({floor // 2**20} MiB): new instances are refused"
    delivery = service.delivery
    if delivery is not None and delivery.forward is not None and delivery.destination_reached is False:
        checks["destination"] = delivery.destination_error or "the destination was not reached at the last try"
    else:
        checks["destination"] = True
    return checks
