"""Making a spool consistent after a crash, and finding what dead processes held.

:meth:`Spool.recover` runs once when a service opens its spool and uses everything here;
:func:`dead_claims` is also used while running, because a process killed just before a start may
not have been gone yet (its worker process, say, still exiting) and its jobs would otherwise wait
for the next restart. Claims found here are handed back through the spool's one release function,
:meth:`Spool.release`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from medblip_dicom.integrations.spool import owners
from medblip_dicom.integrations.spool.journal import FINAL_STATES, Job, JobState, Journal

#: A file of unknown origin in tmp/ or inputs/ without a journal row is removed once this old.
ORPHAN_AGE_S = 60.0


def dead_claims(journal: Journal) -> list[int]:
    """Jobs claimed (processing, or reported and being delivered) by owners that are gone."""
    rows = journal.rows("SELECT id, owner FROM jobs WHERE state IN (?, ?) AND owner IS NOT NULL",
                        (JobState.PROCESSING.value, JobState.REPORTED.value))
    return [int(r["id"]) for r in rows if not owners.owner_alive(r["owner"])]


def claims_of_process(journal: Journal, pid: int) -> list[int]:
    """Processing jobs claimed by any spool instance of process `pid`."""
    rows = journal.rows("SELECT id FROM jobs WHERE state=? AND owner LIKE ?",
                        (JobState.PROCESSING.value, f"{int(pid)}:%"))
    return [int(r["id"]) for r in rows]


def undisposed(journal: Journal) -> list[Job]:
    """Final jobs whose input was not moved out yet (a crash between the journal and the move)."""
    return journal.jobs(where="state IN (?, ?, ?) AND disposed=0", params=tuple(s.value for s in FINAL_STATES))


def inputs_missing(journal: Journal, root: Path) -> list[Job]:
    """Pending jobs whose input file is gone (removed by hand?)."""
    waiting = journal.jobs(where="state IN (?, ?)", params=(JobState.RECEIVED.value, JobState.REPORTED.value))
    return [job for job in waiting if not (root / job.input_file).exists()]


def _abandoned(path: Path, cutoff: float) -> bool:
    """A file in tmp/ or inputs/ without a journal row may go when the spool instance that wrote it
    is gone (its name starts with the owner's tag), or, for files of unknown origin, when it is old."""
    owner = owners.file_owner(path.name)
    if owner is not None and not owners.owner_alive(owner):
        return True
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def remove_orphans(journal: Journal, root: Path) -> int:
    """Remove files in inputs/ without a row (a crash between rename and commit: never acknowledged,
    the producer still has the original) and partial files in tmp/: at once when the spool
    instance that wrote them is gone, else once they are :data:`ORPHAN_AGE_S` old. Returns how many
    inputs went."""
    known = {r[0] for r in journal.rows("SELECT input_file FROM jobs WHERE disposed=0")}
    cutoff = time.time() - ORPHAN_AGE_S
    removed = 0
    for path in (root / "inputs").iterdir():
        if f"inputs/{path.name}" not in known and _abandoned(path, cutoff):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    for path in (root / "tmp").iterdir():
        if _abandoned(path, cutoff):
            with contextlib.suppress(OSError):
                path.unlink()
    return removed
