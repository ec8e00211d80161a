"""The watch folder: files dropped into an inbox become spool jobs, once they are complete.

A watchdog observer (inotify and friends, or a polling observer for network shares) only
reports paths; a settle loop takes a file once its size and modification time stayed unchanged
for ``settle_s`` seconds, copies it durably into the spool and removes it from the inbox. Files
already present at start are found by an initial scan; a periodic rescan catches anything an
observer missed. Write-then-rename is handled (``on_moved``), nested folders are watched, and
ignored names (``.DS_Store``, hidden and temporary files) are never touched.

Every taken input ends in ``done/`` or ``failed/`` (with a ``.reason.txt``), under its relative
path, once its job is finished. When the spool is full, files simply stay in the inbox and are
taken later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from medblip_dicom.fileio import fsync_dir

from medblip_dicom.integrations.config import WatchConfig
from medblip_dicom.integrations.settle import SettleTracker
from medblip_dicom.integrations.spool import Spool, SpoolFullError
from medblip_dicom.integrations.telemetry import Telemetry

logger = logging.getLogger(__name__)


class InboxWatcher:
    """Feeds the spool from an inbox folder. Call :meth:`run` with a stop event, or :meth:`take_all`."""

    def __init__(self, spool: Spool, config: WatchConfig, telemetry: Telemetry | None = None) -> None:
        if config.inbox is None:
            raise ValueError("the watch folder needs an inbox")
        self.spool = spool
        self.config = config
        self.telemetry = telemetry or Telemetry()
        self.inbox = Path(config.inbox)
        self.done_dir = config.resolved_done_dir()
        self.failed_dir = config.resolved_failed_dir()
        self._candidates = SettleTracker(config.settle_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._full_logged = False
        self.taken = 0
        self.ready = threading.Event()

    # -- what counts as an input -------------------------------------------------------------------

    def _excluded_dirs(self) -> set[Path]:
        return {p.resolve() for p in (self.done_dir, self.failed_dir, self.spool.root)}

    def is_input(self, path: Path) -> bool:
        """True when `path` is a file in the inbox that should be taken (not ignored or excluded)."""
        try:
            rel = path.relative_to(self.inbox)
        except ValueError:
            return False
        if any(self.config.is_ignored(part) for part in rel.parts):
            return False
        resolved = path.resolve()
        for excluded in self._excluded_dirs():
            if resolved == excluded or excluded in resolved.parents:
                return False
        return True

    def scan(self) -> list[Path]:
        """Every input file now in the inbox, nested folders included, sorted."""
        found: list[Path] = []
        excluded = self._excluded_dirs()
        for root, dirs, files in os.walk(self.inbox):
            base = Path(root)
            dirs[:] = sorted(d for d in dirs if not self.config.is_ignored(d) and (base / d).resolve() not in excluded)
            for name in sorted(files):
                path = base / name
                if not self.config.is_ignored(name) and path.is_file() and not path.is_symlink():
                    found.append(path)
        return found

    def notice(self, path: str | os.PathLike[str]) -> None:
        """An observer saw `path` change: (re)start its settle clock."""
        p = Path(path)
        if not self.is_input(p):
            return
        with self._lock:
            self._candidates.notice(p, time.monotonic())
        self._wake.set()

    # -- taking files ---------------------------------------------------------------------------

    def _settled(self, now: float) -> list[Path]:
        """Candidates whose size and mtime stayed unchanged for settle_s (see :mod:`.settle`)."""
        with self._lock:
            return self._candidates.settled(now)

    def take(self, path: Path) -> bool:
        """Copy one file into the spool and remove it from the inbox. False when it must wait (spool full)."""
        rel = path.relative_to(self.inbox).as_posix()
        try:
            admission = self.spool.add_file(path, origin="watch", name=rel, done_dir=self.done_dir,
                                            failed_dir=self.failed_dir)
        except SpoolFullError as exc:
            if not self._full_logged:
                logger.warning("%s; inputs wait in the inbox", exc)
                self._full_logged = True
            return False
        except FileNotFoundError:
            with self._lock:
                self._candidates.forget(path)
            return True
        except OSError as exc:  # unreadable for now (permissions, a share that went away): try later
            logger.warning("cannot take an inbox file yet (%s: %s)", type(exc).__name__, exc.strerror or exc)
            self.notice(path)
            return False
        self._full_logged = False
        self.telemetry.file_taken(path)
        try:
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        with self._lock:
            self._candidates.forget(path)
        self.taken += 1
        logger.debug("took an inbox file as job %d (%s)", admission.job_id, admission.state.value)
        self._prune_empty_dirs(path.parent)
        return True

    def _prune_empty_dirs(self, folder: Path) -> None:
        """Remove nested folders that became empty (never the inbox itself)."""
        while folder != self.inbox and self.inbox in folder.parents:
            with contextlib.suppress(OSError):
                folder.rmdir()  # fails unless empty
            if folder.exists():
                return
            folder = folder.parent

    def take_all(self) -> int:
        """Take every file now in the inbox, without settle wait (for ``--once``); returns how many."""
        count = 0
        for path in self.scan():
            if self.take(path):
                count += 1
        return count

    # -- the service loop -----------------------------------------------------------------------

    def _observer(self):  # noqa: ANN202 - watchdog types are imported lazily
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_created(self, event: FileSystemEvent) -> None:
                if not event.is_directory:
                    watcher.notice(os.fsdecode(event.src_path))
                else:  # a folder moved or copied in: its files may not raise their own events
                    for path in watcher.scan():
                        if Path(os.fsdecode(event.src_path)) in path.parents:
                            watcher.notice(path)

            def on_modified(self, event: FileSystemEvent) -> None:
                if not event.is_directory:
                    watcher.notice(os.fsdecode(event.src_path))

            def on_closed(self, event: FileSystemEvent) -> None:
                if not event.is_directory:
                    watcher.notice(os.fsdecode(event.src_path))

            def on_moved(self, event: FileSystemEvent) -> None:
                dest = os.fsdecode(event.dest_path)
                if event.is_directory:
                    for path in watcher.scan():
                        if Path(dest) in path.parents:
                            watcher.notice(path)
                else:
                    watcher.notice(dest)

        observer = PollingObserver(timeout=self.config.poll_interval_s) if self.config.poll else Observer()
        observer.schedule(Handler(), str(self.inbox), recursive=True)
        return observer

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        observer = self._observer()
        observer.start()
        try:
            for path in self.scan():  # after the observer started: nothing falls between the two
                self.notice(path)
            last_scan = time.monotonic()
            logger.info("watching %s (%s observer, settle %.1f s)", self.inbox,
                        "polling" if self.config.poll else "native", self.config.settle_s)
            self.ready.set()
            tick = min(0.25, max(0.05, self.config.settle_s / 4))
            while not stop.is_set():
                now = time.monotonic()
                if self.config.rescan_interval_s and now - last_scan >= self.config.rescan_interval_s:
                    with self._lock:
                        known = self._candidates.paths()
                    for path in self.scan():
                        if path not in known:
                            self.notice(path)
                    last_scan = now
                for path in self._settled(now):
                    if stop.is_set():
                        break
                    self.take(path)
                self._wake.wait(tick)
                self._wake.clear()
        finally:
            observer.stop()
            observer.join(timeout=10)
            logger.info("stopped watching %s", self.inbox)
