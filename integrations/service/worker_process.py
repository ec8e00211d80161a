"""The worker in a process of its own, so that ingest never waits for the model.

In one process the node's C-STORE handling and the worker's Python (decoding, SR building) take
turns on one interpreter lock, and the model's threads take the CPU, so ingest slows down while
the model works (bench/node_ingest.py measures it; figures in bench/RESULTS.md). Here the worker runs in a child process (``spawn``: no fork of a process holding threads), at a lower CPU
priority (``[worker] nice``), on the same spool (SQLite WAL; several processes may share one).

Lifecycle: :meth:`WorkerProcess.start` spawns the child and waits until it has loaded the model;
a model that cannot be loaded raises :class:`WorkerStartError` with the child's reason, as an
in-process load would, and a stop asked for meanwhile ends the wait at once.
:meth:`WorkerProcess.stop` asks the child to stop (the batch in progress finishes) and waits. The
child ignores SIGTERM/SIGINT (systemd signals the whole control group, Ctrl-C the whole process
group): the service stops it, so a clean stop never looks like a crash. A child whose parent is
gone stops by itself, so a killed service never leaves a worker behind. The spool's "received"
and "reported" events are :class:`~medblip_dicom.integrations.spool.doorbell.Doorbell` pipes shared by
both processes, so neither side polls to learn that the other has work for it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

from medblip_dicom.errors import MedblipError

from medblip_dicom.integrations.config.file import ServiceConfig
from medblip_dicom.integrations.spool.doorbell import Doorbell

logger = logging.getLogger(__name__)

#: How long the child may take to load the model before the service gives up on it.
START_TIMEOUT_S = 600.0


class WorkerStartError(MedblipError):
    """The worker process could not start (the model did not load, or the process died)."""


class WorkerProcess:
    """A :class:`~medblip_dicom.integrations.worker.loop.Worker` running in a child process."""

    def __init__(self, config: ServiceConfig, *, received: Doorbell, reported: Doorbell) -> None:
        self.config = config
        self._ctx = multiprocessing.get_context("spawn")
        self._received = received
        self._reported = reported
        self._stop = Doorbell()  # not multiprocessing.Event: see the module docstring
        self._process: Any = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode if self._process is not None else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self, timeout_s: float = START_TIMEOUT_S, cancel: threading.Event | None = None) -> bool:
        """Spawn the child and wait until its model is loaded; raise WorkerStartError if it is not.

        Returns False (the child stopped) when `cancel` is set while the model is loading: a stop
        asked for during a slow start is honoured at once.
        """
        parent_end, child_end = self._ctx.Pipe(duplex=False)
        fmt, levels = logging_for_child()
        self._process = self._ctx.Process(
            target=_child_main, name="medblip-worker", daemon=False,
            args=(self.config, self._stop, self._received, self._reported, child_end, os.getpid(), fmt, levels),
        )
        self._process.start()
        atexit.register(self._at_exit)
        child_end.close()
        deadline = time.monotonic() + timeout_s
        try:
            while not parent_end.poll(0.2):
                if cancel is not None and cancel.is_set():
                    logger.info("stopped while the worker process was loading the model")
                    self._process.kill()
                    self._process.join(10)
                    return False
                if not self._process.is_alive():
                    raise WorkerStartError(f"the worker process exited with code {self._process.exitcode} "
                                           "before it was ready")
                if time.monotonic() > deadline:
                    self.stop(grace_s=5)
                    raise WorkerStartError(f"the worker process did not load the model within {timeout_s:.0f} s")
            try:
                kind, message = parent_end.recv()
            except EOFError:
                self._process.join(5)
                kind, message = "error", f"the worker process exited with code {self._process.exitcode}"
        finally:
            parent_end.close()
        if kind != "ready":
            self._process.join(30)
            raise WorkerStartError(message)
        logger.info("worker process %d ready (%s)", self._process.pid, message)
        return True

    def _at_exit(self) -> None:
        """multiprocessing joins a non-daemon child at exit without a timeout: stop it first."""
        if self.is_alive():
            self.stop(grace_s=30)

    def stop(self, grace_s: float = 120.0) -> None:
        """Ask the child to stop after its batch in progress; kill it after `grace_s`."""
        if self._process is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self._at_exit)
        self._stop.set()
        self._process.join(grace_s)
        if self._process.is_alive():
            logger.error("worker process %d did not stop within %.0f s: killing it", self._process.pid, grace_s)
            self._process.kill()
            self._process.join(10)


def logging_for_child() -> tuple[str | None, dict[str, int]]:
    """The service's log format and levels, for a spawned child to log the same way."""
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    fmt = "json" if type(formatter).__name__ == "JsonFormatter" else getattr(formatter, "_fmt", None)
    return fmt, {name: logging.getLogger(name).level for name in ("medblip_dicom", "pynetdicom")}


# -- the child ---------------------------------------------------------------------------------


def configure_child_logging(log_format: str | None, levels: dict[str, int]) -> None:
    """In a spawned child: log to stderr in the service's format (JSON lines too) at its levels, with
    other libraries' records and warnings redacted as in the service (:mod:`medblip_dicom.logsafety`)."""
    from medblip_dicom.logsafety import protect_logs

    protect_logs()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s" if log_format in (None, "json") else log_format,
                        stream=sys.stderr)
    if log_format == "json":  # the service logs JSON lines: so does its child
        from medblip_dicom.logjson import JsonFormatter

        logging.getLogger().handlers[0].setFormatter(JsonFormatter())
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)



def _child_main(config: ServiceConfig, stop: Any, received: Any, reported: Any, conn: Any, parent_pid: int,
                log_format: str | None, levels: dict[str, int]) -> None:
    """Entry point of the child: load the model, then run the worker until told to stop."""
    configure_child_logging(log_format, levels)
    # SIGTERM / SIGINT reach the child too when a whole control group (systemd) or process group
    # (Ctrl-C) is signalled. The service stops the child itself (doorbell, after the batch in
    # progress), and a child that stopped on its own first would look like a crash to it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    stopping = threading.Event()
    nice = config.worker.nice
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)

    from medblip_dicom.integrations.service.build import build_worker, load_captioner, open_spool

    try:
        captioner = load_captioner(config)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{exc}" if isinstance(exc, MedblipError) else f"{type(exc).__name__}: {exc}"))
        conn.close()
        sys.exit(1)
    spool = open_spool(config, received=received, reported=reported)
    worker = build_worker(spool, captioner, config)
    ident = captioner.identity
    conn.send(("ready", f"pid {os.getpid()}, nice {nice}, model {ident.name} {ident.version}, "
               f"weights {ident.weights_sha256[:12]}, {captioner.device}"))
    conn.close()
    died: list[BaseException] = []

    def run_worker() -> None:
        try:
            worker.run(stopping)
        except BaseException as exc:  # noqa: BLE001 - the parent learns it from the exit code
            logger.exception("worker died: %s", exc)
            died.append(exc)

    body = threading.Thread(target=run_worker, name="medblip-worker", daemon=True)
    body.start()
    try:
        while body.is_alive() and not stopping.is_set():
            if os.getppid() != parent_pid:
                logger.warning("worker process %d: the service (pid %d) is gone; stopping", os.getpid(), parent_pid)
                break
            if stop.wait(0.5):
                break
        stopping.set()
        body.join()
    finally:
        spool.close()
    sys.exit(1 if died else 0)
