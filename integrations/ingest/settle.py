"""When is a file in the inbox complete? A pure tracker of opens, closes, sizes and modification times.

Two ways to know, the better one first:

- **Close-after-write events** (Linux inotify: ``IN_OPEN``, ``IN_CLOSE_WRITE``, ``IN_CLOSE_NOWRITE``,
  watchdog's ``FileOpenedEvent`` / ``FileClosedEvent`` / ``FileClosedNoWriteEvent``): a file that
  someone opened is not complete while any opener still holds it, however long its writer pauses;
  once the last opener closed it and one of them wrote, it is complete at once.
- **Settle time** (every other observer: polling, network shares, macOS, Windows; and files no
  event was seen open, such as those found by a scan or renamed into the inbox): a file that stayed
  the same size, modification time and inode for ``settle_s`` seconds is taken as complete
  (paperless-ngx's ``FileStabilityTracker`` idea). A writer that pauses longer than ``settle_s`` is
  not seen here; the watcher's check before it removes an input (:mod:`.watch`) is what protects it.

Entries are looked at with ``lstat``: a link is never followed, and an entry that is not a regular
file (a link, a FIFO) is reported at once, for the watcher to refuse. The tracker keeps no threads,
watchers or models: the watcher tells it what happened and asks which paths are ready; tests drive
it with their own clock and ``stat``.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    ino: int
    stable_since: float
    #: Openers seen (open events) that have not closed it yet: while > 0 it is not ready.
    opens: int = 0
    #: An opener that wrote closed it since it last changed: ready once ``opens`` is 0.
    closed_after_write: bool = False


class SettleTracker:
    """Paths noticed as changing, who holds them open, and since when each has stayed unchanged."""

    def __init__(self, settle_s: float, *, stat: Callable[[Path], os.stat_result] = os.lstat) -> None:
        if settle_s < 0:
            raise ValueError(f"settle_s must be >= 0, got {settle_s}")
        self.settle_s = settle_s
        self._stat = stat
        self._seen: dict[Path, _Seen] = {}

    def __contains__(self, path: Path) -> bool:
        return path in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def paths(self) -> set[Path]:
        """Every path being tracked."""
        return set(self._seen)

    def _entry(self, path: Path, now: float) -> _Seen:
        seen = self._seen.get(path)
        if seen is None:
            seen = self._seen[path] = _Seen(-1, -1, -1, now)
        return seen

    def notice(self, path: Path, now: float) -> None:
        """`path` changed (or appeared): its settle clock starts again at `now`, and a close seen
        before this change no longer makes it ready. Openers still holding it keep holding it."""
        seen = self._entry(path, now)
        seen.size, seen.mtime_ns, seen.ino, seen.stable_since = -1, -1, -1, now
        seen.closed_after_write = False

    def opened(self, path: Path, now: float) -> None:
        """Someone opened `path` (perhaps to write): it is not ready before they close it."""
        self._entry(path, now).opens += 1

    def closed(self, path: Path, now: float, *, wrote: bool) -> None:
        """An opener closed `path`; `wrote`: it had it open for writing (close-after-write)."""
        seen = self._entry(path, now)
        seen.opens = max(0, seen.opens - 1)
        if wrote:
            seen.closed_after_write = True

    def events_lost(self, now: float) -> None:
        """The observer lost events: open counts and closes may be wrong, so every path waits for
        the settle clock from `now` (a writer still at work changes the file and restarts it)."""
        for seen in self._seen.values():
            seen.opens, seen.closed_after_write = 0, False
            seen.size, seen.stable_since = -1, now

    def forget(self, path: Path) -> None:
        """Stop tracking `path` (taken, or gone)."""
        self._seen.pop(path, None)

    def settled(self, now: float) -> list[Path]:
        """Update every path from ``stat``; return those ready to be taken: regular files that every
        opener closed after a write, or that stayed unchanged for ``settle_s`` with nobody holding
        them open; and, at once, entries that are not regular files (links, FIFOs: to be refused).

        A path that vanished or became a folder is forgotten; one that cannot be stat'ed for another
        reason (permissions, a share that went away) stays, unchanged.
        """
        ready: list[Path] = []
        for path, seen in list(self._seen.items()):
            try:
                st = self._stat(path)
            except FileNotFoundError:
                self.forget(path)
                continue
            except OSError:
                continue
            if stat_module.S_ISDIR(st.st_mode):
                self.forget(path)
                continue
            if not stat_module.S_ISREG(st.st_mode):
                ready.append(path)
                continue
            current = (st.st_size, st.st_mtime_ns, st.st_ino)
            changed = current != (seen.size, seen.mtime_ns, seen.ino)
            if changed:
                seen.size, seen.mtime_ns, seen.ino, seen.stable_since = *current, now
            if seen.opens > 0:
                continue
            if seen.closed_after_write or (not changed and now - seen.stable_since >= self.settle_s):
                ready.append(path)
        return ready
