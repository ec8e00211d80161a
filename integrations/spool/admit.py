"""Admission with group commit: instances that arrive together share one folder fsync and one
journal commit.

A producer writes and fsyncs its instance's bytes itself (in parallel with the others: each
association of the node is a thread of its own), then hands the file to :class:`GroupCommit`.
The first thread to arrive while no commit is running becomes the *leader*: it takes every
arrival queued so far, renames their files into ``inputs/``, fsyncs that folder once, inserts all
their rows in one journal transaction (``synchronous=FULL``: one WAL fsync) and then wakes the
*followers*. Arrivals during that commit queue up for the next one. One sender alone therefore
waits for nothing extra; with several senders the fsyncs per instance fall towards one
(:attr:`GroupCommit.commits` against :attr:`GroupCommit.items`).

The promise is unchanged: :meth:`GroupCommit.submit` returns only after the commit that holds
the arrival is on disk, and if that commit fails, every arrival in it gets the error and none of
their files is left in ``inputs/``: a shared commit is acknowledged to nobody before it is durable.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from medblip_dicom.duplicates import DUPLICATE, conflict_reason
from medblip_dicom.fileio import fsync_dir

from medblip_dicom.integrations.spool.files import InstanceInfo
from medblip_dicom.integrations.spool.journal import JobState, Journal

T = TypeVar("T")
R = TypeVar("R")

#: Manufacturer written into every SR and picture: instances carrying it are never captioned.
OWN_MANUFACTURER = "medblip-dicom"


@dataclass(frozen=True)
class Arrival:
    """An instance whose bytes are fsynced in ``tmp/``, waiting for its commit."""

    tmp: Path
    rel: str  #: its path in the spool once admitted (``inputs/...``)
    size: int
    sha: str
    info: InstanceInfo
    origin: str
    name: str
    done_dir: str | None
    failed_dir: str | None


@dataclass(frozen=True)
class Admitted:
    """The journal row an arrival became."""

    job_id: int
    state: JobState
    reason: str | None
    duplicate_of: int | None


class _Ticket(Generic[T, R]):
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Leader/follower batching of a durable `flush` (one call per batch, results in order)."""

    def __init__(self, flush: Callable[[list[T]], Sequence[R]]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._queue: list[_Ticket[T, R]] = []
        self._flushing = False
        #: Commits run and items committed so far (items / commits = how many shared a commit).
        self.commits = 0
        self.items = 0

    def submit(self, item: T) -> R:
        """Queue `item` and return its result once the commit holding it is durable (or raise its error)."""
        ticket: _Ticket[T, R] = _Ticket(item)
        with self._cond:
            self._queue.append(ticket)
            while not ticket.done:
                if self._flushing:
                    self._cond.wait()
                    continue
                batch, self._queue, self._flushing = self._queue, [], True
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _run(self, batch: list[_Ticket[T, R]]) -> None:
        try:
            results = list(self._flush([t.item for t in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"group commit: {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # every arrival of a failed commit gets its error
            for ticket in batch:
                ticket.error, ticket.done = exc, True
            return
        with self._cond:
            self.commits += 1
            self.items += len(batch)
        for ticket, result in zip(batch, results):
            ticket.result, ticket.done = result, True


def commit_arrivals(root: Path, journal: Journal, arrivals: list[Arrival]) -> list[Admitted]:
    """Rename the arrivals into ``inputs/``, fsync the folder once and journal them in one transaction.

    On any error the renamed files are removed again and the error propagates (to every arrival).
    """
    moved: list[Path] = []
    try:
        for arrival in arrivals:
            target = root / arrival.rel
            os.replace(arrival.tmp, target)
            moved.append(target)
        fsync_dir(root / "inputs")
        now = time.time()
        with journal.write() as db:
            return [_insert(db, journal, arrival, now) for arrival in arrivals]
    except BaseException:
        for target in moved:
            with contextlib.suppress(OSError):
                target.unlink()
        raise


def _insert(db: sqlite3.Connection, journal: Journal, arrival: Arrival, now: float) -> Admitted:
    info = arrival.info
    state, error_class, reason, duplicate_of = JobState.RECEIVED, None, None, None
    if info.sop_instance_uid:
        holder = journal.duplicate_of(db, info.sop_instance_uid, arrival.sha)
        if holder is not None:
            # One SOPInstanceUID, one report (the SR's UIDs and file derive from it): the same
            # content is the same instance again; other content under a UID in use is not captioned.
            duplicate_of, same = holder
            state, error_class = JobState.SKIPPED, DUPLICATE
            reason = f"duplicate of job {duplicate_of} (same SOPInstanceUID and content)" if same else \
                conflict_reason(f"job {duplicate_of}")
    if duplicate_of is None and info.manufacturer == OWN_MANUFACTURER:
        state, error_class = JobState.SKIPPED, "OwnOutput"
        reason = "written by medblip-dicom itself (loop guard): not captioned"
    cur = db.execute(
        "INSERT INTO jobs (origin, name, input_file, state, sop_instance_uid, sop_class_uid, "
        "study_instance_uid, series_instance_uid, transfer_syntax_uid, content_sha256, size, error_class, "
        "reason, received_at, updated_at, finished_at, done_dir, failed_dir, facts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (arrival.origin, arrival.name, arrival.rel, state.value, info.sop_instance_uid, info.sop_class_uid,
         info.study_instance_uid, info.series_instance_uid, info.transfer_syntax_uid, arrival.sha, arrival.size,
         error_class, reason, now, now, now if state is JobState.SKIPPED else None,
         arrival.done_dir, arrival.failed_dir, json.dumps(info.facts) if info.facts else None),
    )
    return Admitted(int(cur.lastrowid), state, reason, duplicate_of)
