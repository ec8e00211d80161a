"""The output folder (``[output] dir``) as a sink: each report copied in atomically under its own name.

A reader of the folder never sees a partial file (temporary name, fsync, rename); copying the same
report again replaces it with the same bytes, so a retried job leaves one file. A copy that fails
(a full disk, no permission) is a transient outcome: the job waits and is tried again.
:meth:`FolderSink.recover` removes the temporary files a process killed mid-copy left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medblip_dicom.fileio import atomic_copy, remove_stale_temp_files

from medblip_dicom.integrations.delivery.sinks.base import StoreOutcome

logger = logging.getLogger(__name__)


class FolderSink:
    """Copies reports into one folder (created when missing)."""

    kind = "folder"
    protocol = "file copy"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.destination = self.folder

    def recover(self) -> int:
        """At start: remove the temporary files an interrupted copy left (a reader never sees them
        under a final name, but they must not pile up). Returns how many."""
        removed = remove_stale_temp_files(self.folder)
        if removed:
            logger.warning("removed %d temporary file(s) that an interrupted copy left in %s", removed, self.folder)
        return removed

    def send(self, paths: Sequence[Path]) -> list[StoreOutcome]:
        out = []
        for path in paths:
            try:
                atomic_copy(path, self.folder / path.name)
            except OSError as exc:
                out.append(StoreOutcome(path, None, False, False, f"cannot write to {self.folder}: {exc}"))
                continue
            out.append(StoreOutcome(path, None, True, False, "copied"))
        return out
