"""When is a file in the inbox complete? A pure tracker of sizes and modification times.

A file being copied, downloaded or written by a scanner grows and changes; one that stayed the
same size with the same modification time for ``settle_s`` seconds is taken as complete. This is
paperless-ngx's ``FileStabilityTracker`` idea, kept free of threads, watchers and models: the
watcher (:mod:`.watch`) tells it which paths changed and asks which have settled; tests drive it
with their own clock and ``stat``.
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
    stable_since: float


class SettleTracker:
    """Paths noticed as changing, and since when each has stayed unchanged."""

    def __init__(self, settle_s: float, *, stat: Callable[[Path], os.stat_result] = os.stat) -> None:
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

    def notice(self, path: Path, now: float) -> None:
        """`path` changed (or appeared): its settle clock starts again at `now`."""
        self._seen.pop(path, None)
        self._seen[path] = _Seen(-1, -1, now)

    def forget(self, path: Path) -> None:
        """Stop tracking `path` (taken, or gone)."""
        self._seen.pop(path, None)

    def settled(self, now: float) -> list[Path]:
        """Update every clock from ``stat``; return the regular files unchanged for ``settle_s``.

        A path that vanished or is no longer a regular file is forgotten; one that cannot be
        stat'ed for another reason (permissions, a share that went away) stays, unchanged.
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
            if not stat_module.S_ISREG(st.st_mode):
                self.forget(path)
                continue
            if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                seen.size, seen.mtime_ns, seen.stable_since = st.st_size, st.st_mtime_ns, now
                continue
            if now - seen.stable_since >= self.settle_s:
                ready.append(path)
        return ready
