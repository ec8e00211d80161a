"""More listener processes for the node: ``[node] listeners = N`` spreads associations over N processes.

One pynetdicom node is bound by its interpreter lock: a listener that stores nothing reaches only
about a third of dcmtk ``storescp --fork``'s rate with four concurrent senders on 2 cores
(bench/node_ingest.py), and concurrent associations in one process are slower than one. So the
service's own node binds its port with SO_REUSEPORT and N - 1 spawned children bind the same port;
the kernel hands each new connection to one of them. Each child is a plain
:class:`~medblip_dicom.integrations.ingest.node.StorageNode` on the same spool (SQLite WAL: several
processes may share it), so every instance is durable before it is answered, exactly as in the
service's own node; its arrivals ring the worker process's doorbell.

Lifecycle, as for the worker process (:mod:`.worker_process`): :meth:`ListenerProcesses.start` waits
until every child listens; children ignore SIGTERM/SIGINT (the service stops them, after the
associations in progress finish or the grace time ends), stop by themselves when the service is
gone, and a child that dies makes the service stop with an error (systemd restarts it; what a child
acknowledged is in the spool). A child writes its own audit messages (appended to the same file)
and logs to the same stderr; its C-STORE latency is not in the service's ``/metrics`` (the
journal-backed counters are).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

from medblip_dicom.integrations.config.file import ServiceConfig
from medblip_dicom.integrations.spool.doorbell import Doorbell
from medblip_dicom.integrations.service.worker_process import configure_child_logging, logging_for_child

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


class ListenerProcesses:
    """`count` child processes each running a StorageNode on `port` (which the service's node holds)."""

    def __init__(self, config: ServiceConfig, port: int, count: int, *, received: Doorbell,
                 reported: Doorbell) -> None:
        self.config = dataclasses.replace(config, node=dataclasses.replace(config.node, port=port))
        self.count = count
        self._bells = (received, reported)
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = Doorbell()
        self._processes: list[Any] = []
        self._stopping = threading.Event()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Spawn the children and wait until each listens; raise RuntimeError naming one that did not."""
        fmt, levels = logging_for_child()
        waits = []
        for k in range(self.count):
            parent_end, child_end = self._ctx.Pipe(duplex=False)
            process = self._ctx.Process(target=_child_main, name=f"medblip-listener-{k + 1}", daemon=True,
                                        args=(self.config, self._stop, *self._bells, child_end, os.getpid(), fmt,
                                              levels))
            process.start()
            child_end.close()
            self._processes.append(process)
            waits.append(parent_end)
        deadline = time.monotonic() + timeout_s
        try:
            for process, conn in zip(self._processes, waits):
                while not conn.poll(0.2):
                    if not process.is_alive() or time.monotonic() > deadline:
                        raise RuntimeError(f"listener process {process.pid} did not start (exit code "
                                           f"{process.exitcode})")
                kind, message = conn.recv()
                if kind != "ready":
                    raise RuntimeError(f"listener process {process.pid}: {message}")
        except BaseException:
            self.stop(grace_s=1)
            raise
        finally:
            for conn in waits:
                conn.close()
        logger.info("node: %d more listener process(es) on port %d: %s", self.count, self.config.node.port,
                    ", ".join(str(p) for p in self.pids))

    def watch(self, stop: threading.Event) -> None:
        """Until `stop`: raise RuntimeError when a child exits on its own (the service then stops)."""
        while not stop.wait(0.5):
            if self._stopping.is_set():
                return
            for process in self._processes:
                if not process.is_alive() and not self._stopping.is_set():
                    raise RuntimeError(f"listener process {process.pid} exited with code {process.exitcode}")

    def stop(self, grace_s: float = 5.0) -> None:
        """Ask every child to stop listening (associations in progress get `grace_s`); kill stragglers."""
        self._stopping.set()
        self._stop.set()
        deadline = time.monotonic() + grace_s + 10
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("listener process %d did not stop: killing it", process.pid)
                process.kill()
                process.join(5)


def _child_main(config: ServiceConfig, stop: Any, received: Any, reported: Any, conn: Any, parent_pid: int,
                log_format: str | None, levels: dict[str, int]) -> None:
    """Entry point of a listener child: open the spool, listen on the shared port until told to stop."""
    configure_child_logging(log_format, levels)
    for sig in (signal.SIGTERM, signal.SIGINT):  # the service stops us (see the module docstring)
        signal.signal(sig, signal.SIG_IGN)
    from medblip_dicom.integrations.service.build import build_telemetry, open_spool
    from medblip_dicom.integrations.ingest.node import StorageNode

    try:
        spool = open_spool(config, received=received, reported=reported)
        telemetry = build_telemetry(spool, config, worker_alive=lambda: True)
        node = StorageNode(spool, config.node, telemetry, reuse_port=True)
        node.start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        sys.exit(1)
    conn.send(("ready", f"pid {os.getpid()}"))
    conn.close()
    try:
        while not stop.wait(0.5):
            if os.getppid() != parent_pid:
                logger.warning("listener process %d: the service (pid %d) is gone; stopping", os.getpid(), parent_pid)
                break
    finally:
        node.stop()
        if telemetry.audit is not None:
            with contextlib.suppress(Exception):
                telemetry.audit.close()
        spool.close()
    sys.exit(0)
