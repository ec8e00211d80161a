"""Wires one spool to its producers (watch folder, node) and consumers (worker, delivery).

:class:`Service` is what ``medblip watch`` and ``medblip node`` run: it opens the spool and
recovers it, starts the worker (by default in a child process that loads the model:
:mod:`~medblip_dicom.integrations.service.worker_process`; in a thread when given a loaded captioner or with
``[worker] separate_process = false``) and the delivery loop, then the producers.
:meth:`Service.stop` stops the producers first (no new work), lets the batch in progress finish,
and closes the spool (claims are released, so a restart resumes them). If a thread or the worker
process dies of an unexpected error the service stops itself and :attr:`Service.error` says why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from typing import TYPE_CHECKING

from medblip_dicom.integrations.ops import readiness
from medblip_dicom.integrations.service.build import (
    build_delivery, build_stow_endpoint, build_telemetry, build_worker, load_captioner, open_spool,
)
from medblip_dicom.integrations.config.file import ConfigError, ServiceConfig
from medblip_dicom.integrations.delivery.loop import Delivery
from medblip_dicom.integrations.spool.doorbell import Doorbell
from medblip_dicom.integrations.service.listeners import ListenerProcesses
from medblip_dicom.integrations.ingest.node import StorageNode
from medblip_dicom.integrations.ops.http import OpsServer
from medblip_dicom.integrations.spool import FINAL_STATES, PENDING_STATES, JobState, Spool
from medblip_dicom.integrations.ops.telemetry import Telemetry
from medblip_dicom.integrations.ingest.watch import InboxWatcher
from medblip_dicom.integrations.service.worker_process import WorkerProcess

if TYPE_CHECKING:
    from medblip_dicom.captioner import Captioner
    from medblip_dicom.integrations.ingest.stow.endpoint import StowEndpoint
    from medblip_dicom.integrations.worker.loop import Worker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnceResult:
    """What ``--once`` did."""

    taken: int
    delivered: int
    skipped: int
    failed: int
    waiting: int


class Service:
    """A spool with its worker, delivery and producers. Use :meth:`run` or :meth:`start`/:meth:`stop`."""

    def __init__(self, config: ServiceConfig, *, watch: bool = False, node: bool = False,
                 captioner: Captioner | None = None) -> None:
        if not config.has_sink:
            raise ConfigError("reports need somewhere to go: set [output] dir (--out) and/or "
                              "[forward] destination (--forward) or dicomweb_url (--forward-dicomweb)")
        if watch and config.watch.inbox is None:
            raise ConfigError("[watch] inbox: no inbox folder given")
        self.config = config
        self.want_watch = watch
        self.want_node = node
        self._captioner = captioner
        if node and config.node.listeners > 1 and not self.separate_worker:
            raise ConfigError("[node] listeners > 1 needs the worker in its own process "
                              "([worker] separate_process = true): the listeners wake it through the spool's doorbell")
        self.spool: Spool | None = None
        self.worker: Worker | None = None
        self.worker_process: WorkerProcess | None = None
        self.delivery: Delivery | None = None
        self.watcher: InboxWatcher | None = None
        self.node: StorageNode | None = None
        self.listeners: ListenerProcesses | None = None  # [node] listeners > 1: more node processes
        self.stow: StowEndpoint | None = None
        self.telemetry: Telemetry | None = None
        self.ops: OpsServer | None = None
        self._audit_running = False
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer_stop = threading.Event()

    # -- building ------------------------------------------------------------------------------

    def _build(self, *, in_process: bool) -> None:
        cfg = self.config
        if in_process and self._captioner is None:
            self._captioner = load_captioner(cfg)
        # In-process: thread events. Worker process: process-shared doorbells, so each side wakes
        # the other without polling.
        bells = {} if in_process else {"received": Doorbell(), "reported": Doorbell()}
        self._bells = bells
        self.spool = open_spool(cfg, **bells)
        recovered = self.spool.recover()
        summary = self.spool.summary()
        logger.info("spool %s: %d pending, %d done, %d failed%s", self.spool.root, summary.queue_depth, summary.done,
                    summary.failed, " (after recovery)" if any(recovered.values()) else "")
        if in_process:
            assert self._captioner is not None
            self.worker = build_worker(self.spool, self._captioner, cfg)
        else:
            self.worker_process = WorkerProcess(cfg, **bells)
        self.telemetry = build_telemetry(self.spool, cfg, worker_alive=self._worker_alive)
        self.delivery = build_delivery(self.spool, cfg, self.telemetry)
        self.delivery.recover()
        if self.want_watch:
            self.watcher = InboxWatcher(self.spool, cfg.watch, self.telemetry)
        if self.want_node:
            self.node = StorageNode(self.spool, cfg.node, self.telemetry, reuse_port=cfg.node.listeners > 1)
        if self.want_node and cfg.dicomweb.enabled:
            self.stow = build_stow_endpoint(self.spool, cfg, self.telemetry)

    def _thread(self, name: str, target: Callable[[threading.Event], None], stop: threading.Event) -> None:
        def body() -> None:
            try:
                target(stop)
            except BaseException as exc:  # noqa: BLE001 - report and stop the whole service
                logger.exception("%s died: %s", name, exc)
                if self.error is None:
                    self.error = exc
                self._stop.set()
                self._producer_stop.set()

        thread = threading.Thread(target=body, name=f"medblip-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- running -------------------------------------------------------------------------------

    @property
    def separate_worker(self) -> bool:
        """True when the worker runs in its own process (not when a loaded captioner was given)."""
        return self._captioner is None and self.config.worker.separate_process

    def start(self, cancel: threading.Event | None = None) -> None:
        """Open the spool, start the worker (it loads the model), delivery and producers.

        `cancel` set while the worker process loads the model stops the start there (nothing is
        listening yet); :meth:`stop` then cleans up.
        """
        self._build(in_process=not self.separate_worker)
        assert self.delivery is not None
        if self.worker_process is not None:
            try:
                started = self.worker_process.start(cancel=cancel)
            except BaseException:
                self._close_audit()
                self.spool.close()  # type: ignore[union-attr]
                raise
            if not started:
                self._stop.set()
                return
            self._thread("worker-watch", self._watch_worker_process, self._stop)
        else:
            assert self.worker is not None
            self._thread("worker", self.worker.run, self._stop)
        self._thread("delivery", self.delivery.run, self._stop)
        if self.watcher is not None:
            self._thread("watch", self.watcher.run, self._producer_stop)
        if self.node is not None:
            self.node.start()
            if self.config.node.listeners > 1:
                self.listeners = ListenerProcesses(self.config, self.node.port, self.config.node.listeners - 1,
                                                   **self._bells)
                self.listeners.start()
                self._thread("listeners", self.listeners.watch, self._stop)
        if self.stow is not None:
            self.stow.start()
        assert self.telemetry is not None
        self._audit_started()
        m = self.config.metrics
        if m.enabled and self.telemetry.metrics is not None:
            metrics = self.telemetry.metrics
            self.ops = OpsServer(m.host, m.port, metrics=metrics.exposition, health=lambda: readiness.health(self),
                                 ready=lambda: readiness.ready(self))
            self.ops.start()

    def _audit_started(self) -> None:
        if self.telemetry is not None and self.telemetry.audit is not None:
            self.telemetry.audit.application(True, ae_title=self.config.node.ae_title)
            self._audit_running = True

    def _close_audit(self) -> None:
        """The application-stop message (if it started), then the audit file (and syslog sender) closed."""
        if self.telemetry is not None and self.telemetry.audit is not None:
            if self._audit_running:
                self.telemetry.audit.application(False, ae_title=self.config.node.ae_title)
            self.telemetry.audit.close()
            self.telemetry.audit = None
            self._audit_running = False

    def _worker_alive(self) -> bool:
        if self.worker_process is not None:
            return self.worker_process.is_alive()
        return any(t.name == "medblip-worker" and t.is_alive() for t in self._threads)

    @property
    def threads(self) -> list[threading.Thread]:
        """The service's own threads (for /healthz)."""
        return list(self._threads)

    def _watch_worker_process(self, stop: threading.Event) -> None:
        """Stop the service when the worker process exits on its own (not when we stop it).

        The jobs it was captioning count one attempt each: a job whose decoding kills the process
        (a codec crash, the kernel's OOM killer) fails after MAX_ATTEMPTS instead of taking the
        service down at every restart.
        """
        from medblip_dicom.integrations.worker.loop import MAX_ATTEMPTS

        process = self.worker_process
        assert process is not None and self.spool is not None
        while not stop.wait(0.5):
            if process.is_alive() or self._producer_stop.is_set():
                continue
            code = process.exitcode
            if process.pid is not None:
                self.spool.release_process(
                    process.pid, max_attempts=MAX_ATTEMPTS, error_class="WorkerProcessDied",
                    reason=f"the worker process died (exit code {code}) while captioning it, {MAX_ATTEMPTS} times "
                           "(a decoder crash or out of memory?)")
            raise RuntimeError(f"the worker process exited with code {code}")

    def stop(self) -> None:
        """Stop producers, then worker and delivery (the batch in progress finishes), close the spool."""
        self._producer_stop.set()
        try:
            if self.stow is not None:
                self.stow.stop()
            if self.listeners is not None:
                self.listeners.stop()
            if self.node is not None:
                self.node.stop()
        finally:
            self._stop.set()
            if self.worker_process is not None:
                self.worker_process.stop()
            for thread in self._threads:
                thread.join(timeout=120)
                if thread.is_alive():
                    logger.error("%s did not stop within 120 s", thread.name)
            self._threads.clear()
            if self.ops is not None:
                self.ops.stop()
                self.ops = None
            self._close_audit()
            if self.delivery is not None:
                self.delivery.close()
            if self.spool is not None:
                self.spool.close()

    @property
    def stopped(self) -> threading.Event:
        """Set when the service stops itself (a thread died) or was stopped."""
        return self._stop

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set (or a thread dies), then stop cleanly."""
        try:
            self.start(cancel=stop)
            while not stop.wait(0.5):
                if self._stop.is_set():
                    break
        finally:
            self.stop()

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_once(self) -> OnceResult:
        """Take what is in the inbox, caption it, deliver it once, and return (``medblip watch --once``).

        Reports the destination did not take stay ``reported`` in the spool for the next run.
        """
        self._build(in_process=True)
        assert self.spool is not None and self.worker is not None and self.delivery is not None
        self._audit_started()
        try:
            before = self.spool.jobs()
            last_id = max((j.id for j in before), default=0)
            resumed = {j.id for j in before if j.state not in FINAL_STATES}
            taken = self.watcher.take_all() if self.watcher is not None else 0
            self.worker.process_available()
            self.delivery.deliver_all_once()
            mine = [j for j in self.spool.jobs() if j.id > last_id or j.id in resumed]
            count = {s: sum(j.state is s for j in mine) for s in JobState}
            return OnceResult(taken, count[JobState.DELIVERED], count[JobState.SKIPPED], count[JobState.FAILED],
                              sum(count[s] for s in PENDING_STATES))
        finally:
            self._close_audit()
            self.delivery.close()
            self.spool.close()
