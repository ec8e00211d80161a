"""The watch folder: files dropped into an inbox become spool jobs, once they are complete.

A watchdog observer (inotify and friends, or a polling observer for network shares) only
reports paths; the run loop takes a file once it is complete (:mod:`.settle`): on Linux when the
last process that had it open closed it after writing (close-after-write events), elsewhere once
its size and modification time stayed unchanged for ``settle_s`` seconds. It then copies the file
durably into the spool and removes it from the inbox. Files already present at start are found by
an initial scan; a periodic rescan (and one after the observer lost events) catches anything an
observer missed. Write-then-rename is handled (``on_moved``), nested folders are watched, and
ignored names (``.DS_Store``, hidden and temporary files) are never touched.

The inbox is written by others, so nothing in it is trusted (:mod:`.inbox`): a symbolic link (to
a file or a folder) is never followed, nothing is opened outside the inbox, a FIFO never blocks
the watcher, and a file with several names (a hard link) is not read; each such entry is refused
with a reason file in ``failed/``. An input is read from the descriptor that was checked, and it is
removed from the inbox only if it is still the very file that was read (same inode, size and
modification time): a writer that changed it since keeps it, and it is taken again once complete.

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
from collections.abc import Callable
from pathlib import Path

from medblip_dicom.fileio import fsync_dir

from medblip_dicom.integrations.config.file import WatchConfig
from medblip_dicom.integrations.config.checks import fail
from medblip_dicom.integrations.ingest.inbox import (
    HARDLINK, SYMLINK, FileIdentity, InboxEntryChanged, InboxEntryRefused, open_entry, refuse_entry,
)
from medblip_dicom.integrations.ingest.settle import SettleTracker
from medblip_dicom.integrations.spool import Spool, SpoolFullError
from medblip_dicom.integrations.ops.telemetry import Telemetry

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
        self._events_lost = threading.Event()
        self._full_logged = False
        #: True while the observer reports opens and closes (Linux inotify): files are taken on close.
        self.close_events = False
        self.taken = 0
        self.refused = 0
        self.ready = threading.Event()
        self._check_own_folders()

    def _check_own_folders(self) -> None:
        """The done and failed folders inside the inbox must be real folders: inputs are moved into
        them, so a link planted there by anyone who can write into the inbox would send every input
        where it points. Raises :class:`ConfigError` naming the setting."""
        for key, folder in (("done_dir", self.done_dir), ("failed_dir", self.failed_dir)):
            if self.inbox in folder.parents and folder.is_symlink():
                fail("watch", key, f"{folder} is a symbolic link inside the inbox; inputs are moved into it, so it "
                     f"must be a real folder: remove the link, or set [watch] {key} to a folder outside the inbox")

    # -- what counts as an input -------------------------------------------------------------------

    def _excluded(self, path: Path) -> bool:
        """True for the done, failed and spool folders (and what lies in them) inside the inbox.

        Compared by name beneath the inbox, so a link is neither followed nor mistaken for them."""
        real = self.inbox.resolve() / path.relative_to(self.inbox)
        for folder in (self.done_dir, self.failed_dir, self.spool.root):
            excluded = folder.resolve()
            if real == excluded or excluded in real.parents:
                return True
        return False

    def is_input(self, path: Path) -> bool:
        """True when `path` is an entry of the inbox to be taken or refused (not ignored or excluded)."""
        try:
            rel = path.relative_to(self.inbox)
        except ValueError:
            return False
        if not rel.parts or any(part in (".", "..") or self.config.is_ignored(part) for part in rel.parts):
            return False
        return not self._excluded(path)

    def scan(self) -> list[Path]:
        """Every entry now in the inbox, nested folders included, sorted: files, and what will be
        refused (links, FIFOs). A linked folder is listed itself and never descended."""
        found: list[Path] = []
        for root, dirs, files in os.walk(self.inbox):  # os.walk never descends a linked folder
            base = Path(root)
            descend = []
            for name in sorted(dirs):
                path = base / name
                if self.config.is_ignored(name) or self._excluded(path):
                    continue
                if path.is_symlink():
                    found.append(path)
                else:
                    descend.append(name)
            dirs[:] = descend
            found += [base / name for name in sorted(files) if not self.config.is_ignored(name)]
        return sorted(found)

    def notice(self, path: str | os.PathLike[str]) -> None:
        """An observer saw `path` appear or change: (re)start its settle clock."""
        self._track(path, lambda p, now: self._candidates.notice(p, now))

    def opened(self, path: str | os.PathLike[str]) -> None:
        """Someone opened `path` (close events only): it waits for them to close it."""
        self._track(path, lambda p, now: self._candidates.opened(p, now))

    def closed(self, path: str | os.PathLike[str], *, wrote: bool) -> None:
        """Someone closed `path` (close events only); `wrote`: after writing it."""
        self._track(path, lambda p, now: self._candidates.closed(p, now, wrote=wrote))

    def events_lost(self) -> None:
        """The observer lost events: every path falls back to the settle clock, and the inbox is rescanned."""
        with self._lock:
            self._candidates.events_lost(time.monotonic())
        self._events_lost.set()
        self._wake.set()

    def _track(self, path: str | os.PathLike[str], update: Callable[[Path, float], None]) -> None:
        p = Path(path)
        if not self.is_input(p):
            return
        with self._lock:
            update(p, time.monotonic())
        self._wake.set()

    # -- taking files ---------------------------------------------------------------------------

    def _settled(self, now: float) -> list[Path]:
        """Candidates that are complete, or to be refused (see :mod:`.settle`)."""
        with self._lock:
            return self._candidates.settled(now)

    def _forget(self, *paths: Path) -> None:
        with self._lock:
            for path in paths:
                self._candidates.forget(path)

    def take(self, path: Path) -> bool:
        """Copy one input into the spool and remove it from the inbox, or refuse it (links, FIFOs, hard
        links). False when it must wait: spool full, unreadable for now, or changed while it was read."""
        try:
            rel = path.relative_to(self.inbox).as_posix()
            fd, st = open_entry(self.inbox, rel)
        except InboxEntryRefused as refusal:
            self._refuse(path, refusal)
            return True
        except (FileNotFoundError, ValueError):  # gone, or not a path inside the inbox
            self._forget(path)
            return True
        except OSError as exc:  # unreadable for now (permissions, a share that went away): try later
            logger.warning("cannot take an inbox file yet (%s: %s)", type(exc).__name__, exc.strerror or exc)
            self.notice(path)
            return False
        read = FileIdentity.of(st)

        def unchanged_since_opened() -> None:
            """The copy is what the inbox holds: the open file and the name are still that version."""
            if FileIdentity.of(os.fstat(fin.fileno())) != read or FileIdentity.of(os.lstat(path)) != read:
                raise InboxEntryChanged(rel, "changed while it was read: left in the inbox to be taken again")

        with open(fd, "rb", closefd=True) as fin:
            try:
                admission = self.spool.add_stream(fin, st.st_size, origin="watch", name=rel, done_dir=self.done_dir,
                                                  failed_dir=self.failed_dir, verify=unchanged_since_opened)
            except InboxEntryChanged as exc:
                logger.info("an inbox file %s", exc.reason)
                self.notice(path)
                return False
            except SpoolFullError as exc:
                if not self._full_logged:
                    logger.warning("%s; inputs wait in the inbox", exc)
                    self._full_logged = True
                return False
            except FileNotFoundError:  # removed by its sender while it was read
                self._forget(path)
                return True
            except OSError as exc:
                logger.warning("cannot take an inbox file yet (%s: %s)", type(exc).__name__, exc.strerror or exc)
                self.notice(path)
                return False
            fin.seek(0)
            self.telemetry.file_taken(fin)  # the audit reads the file that was taken, not its name again
        self._full_logged = False
        self.taken += 1
        logger.debug("took an inbox file as job %d (%s)", admission.job_id, admission.state.value)
        self._remove_if_unchanged(path, read, admission.job_id)
        return True

    def _remove_if_unchanged(self, path: Path, read: FileIdentity, job_id: int) -> None:
        """Remove a taken input from the inbox, unless it is no longer the version that was read."""
        try:
            if FileIdentity.of(os.lstat(path)) != read:
                logger.warning("job %d: its inbox file changed after it was read; left in the inbox to be taken "
                               "again", job_id)
                self.notice(path)
                return
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        self._forget(path)
        self._prune_empty_dirs(path.parent)

    def _refuse(self, path: Path, refusal: InboxEntryRefused) -> None:
        """Put a refused entry aside with its reason (:func:`.inbox.refuse_entry`) and say so."""
        entry = self.inbox / refusal.source
        self._forget(path, entry)
        try:
            reason_file = refuse_entry(self.inbox, self.failed_dir, refusal)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("cannot put a refused inbox entry aside (%s: %s)", type(exc).__name__, exc.strerror or exc)
            return
        if reason_file is None:  # it changed since: look again
            self.notice(entry)
            return
        self.refused += 1
        logger.warning("refused an inbox entry, %s (reason file in the failed folder)", refusal.reason)
        if refusal.kind in (SYMLINK, HARDLINK):
            self.telemetry.security_alert(peer="watch folder", detail=f"inbox entry refused: a {refusal.kind}")
        self._prune_empty_dirs(entry.parent)

    def _prune_empty_dirs(self, folder: Path) -> None:
        """Remove nested folders that became empty (never the inbox itself)."""
        while folder != self.inbox and self.inbox in folder.parents:
            with contextlib.suppress(OSError):
                folder.rmdir()  # fails unless empty
            if folder.exists():
                return
            folder = folder.parent

    def take_all(self) -> int:
        """Take every file now in the inbox, without settle wait (for ``--once``); returns how many
        were taken into the spool (refused entries are not counted)."""
        before = self.taken
        for path in self.scan():
            self.take(path)
        return self.taken - before

    # -- the service loop -----------------------------------------------------------------------

    def _observer(self):  # noqa: ANN202 - watchdog types are imported lazily
        from watchdog import events
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=self.config.poll_interval_s) if self.config.poll else Observer()
        try:
            from watchdog.observers.inotify import InotifyObserver
        except ImportError:  # not Linux
            InotifyObserver = None  # noqa: N806
        # Opens are counted only where every close is reported, with or without a write.
        self.close_events = (InotifyObserver is not None and isinstance(observer, InotifyObserver)
                             and hasattr(events, "FileClosedNoWriteEvent"))
        watcher, close_events = self, self.close_events

        class Handler(events.FileSystemEventHandler):
            def on_created(self, event: events.FileSystemEvent) -> None:
                if not event.is_directory:
                    watcher.notice(os.fsdecode(event.src_path))
                else:  # a folder moved or copied in: its files may not raise their own events
                    folder = Path(os.fsdecode(event.src_path))
                    for path in watcher.scan():
                        if folder in path.parents:
                            watcher.notice(path)

            def on_modified(self, event: events.FileSystemEvent) -> None:
                if not event.is_directory:
                    watcher.notice(os.fsdecode(event.src_path))

            on_attrib = on_modified

            def on_opened(self, event: events.FileSystemEvent) -> None:
                if close_events and not event.is_directory:
                    watcher.opened(os.fsdecode(event.src_path))

            def on_closed(self, event: events.FileSystemEvent) -> None:
                if event.is_directory:
                    return
                if close_events:
                    watcher.closed(os.fsdecode(event.src_path), wrote=True)
                else:
                    watcher.notice(os.fsdecode(event.src_path))

            def on_closed_no_write(self, event: events.FileSystemEvent) -> None:
                if close_events and not event.is_directory:
                    watcher.closed(os.fsdecode(event.src_path), wrote=False)

            def on_events_lost(self, event: events.FileSystemEvent) -> None:
                watcher.events_lost()

            def on_moved(self, event: events.FileSystemEvent) -> None:
                dest = os.fsdecode(event.dest_path)
                if event.is_directory:
                    for path in watcher.scan():
                        if Path(dest) in path.parents:
                            watcher.notice(path)
                else:
                    watcher.notice(dest)

        observer.schedule(Handler(), str(self.inbox), recursive=True)
        return observer

    def _rescan(self) -> None:
        with self._lock:
            known = self._candidates.paths()
        for path in self.scan():
            if path not in known:
                self.notice(path)

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._check_own_folders()
        observer = self._observer()
        observer.start()
        try:
            for path in self.scan():  # after the observer started: nothing falls between the two
                self.notice(path)
            last_scan = time.monotonic()
            logger.info("watching %s (%s observer, %s)", self.inbox, "polling" if self.config.poll else "native",
                        f"files taken when closed after writing, settle {self.config.settle_s:.1f} s as the fallback"
                        if self.close_events else f"settle {self.config.settle_s:.1f} s")
            self.ready.set()
            tick = min(0.25, max(0.05, self.config.settle_s / 4))
            while not stop.is_set():
                now = time.monotonic()
                rescan_due = self.config.rescan_interval_s and now - last_scan >= self.config.rescan_interval_s
                if rescan_due or self._events_lost.is_set():
                    self._events_lost.clear()
                    self._rescan()
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
