"""The spool's journal: one SQLite file in WAL mode holding every job and its state.

Job states::

    received -> processing -> reported -> delivered
                     |            |
                     +-> failed <-+        (error class, reason and DICOM status are columns)
                     +-> skipped           (non-images, our own outputs, duplicates)

Every change is one write transaction (``BEGIN IMMEDIATE`` takes the write lock across processes;
``synchronous=FULL``: a commit is on disk). Several processes may share one journal. Reading it
read-only (``medblip status``) creates and changes nothing, and gives the same
:class:`SpoolSummary` as the running service.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from medblip_dicom.errors import MedblipError

SCHEMA_VERSION = 2


class SpoolError(MedblipError):
    """The spool cannot do what was asked (unreadable journal, missing folder, ...)."""


class JobState(str, Enum):
    """Where a job stands (see the module docstring)."""

    RECEIVED = "received"
    PROCESSING = "processing"
    REPORTED = "reported"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


PENDING_STATES = (JobState.RECEIVED, JobState.PROCESSING, JobState.REPORTED)
FINAL_STATES = (JobState.DELIVERED, JobState.FAILED, JobState.SKIPPED)


@dataclass(frozen=True)
class Job:
    """One row of the journal."""

    id: int
    origin: str
    name: str
    input_file: str
    state: JobState
    sop_instance_uid: str | None
    sop_class_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str | None
    content_sha256: str
    size: int
    error_class: str | None
    reason: str | None
    dicom_status: int | None
    received_at: float
    updated_at: float
    reported_at: float | None
    finished_at: float | None
    attempts: int
    next_attempt_at: float
    owner: str | None
    reports: tuple[str, ...]
    sr_sop_instance_uid: str | None
    done_dir: str | None
    failed_dir: str | None
    disposed: bool
    final_path: str | None

    @property
    def error(self) -> str | None:
        """The reason as people read it: ``ErrorClass: message`` (or the message alone)."""
        if self.reason is None:
            return None
        return f"{self.error_class}: {self.reason}" if self.error_class else self.reason


@dataclass(frozen=True)
class SpoolSummary:
    """Counts per state, pending bytes and the oldest pending job: what ``medblip status`` prints."""

    counts: dict[str, int]
    pending_bytes: int
    oldest_pending: Job | None
    now: float

    @property
    def queue_depth(self) -> int:
        return sum(self.counts.get(s.value, 0) for s in PENDING_STATES)

    @property
    def done(self) -> int:
        return self.counts.get("delivered", 0) + self.counts.get("skipped", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    name TEXT NOT NULL,
    input_file TEXT NOT NULL,
    state TEXT NOT NULL,
    sop_instance_uid TEXT,
    sop_class_uid TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    transfer_syntax_uid TEXT,
    content_sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    error_class TEXT,
    reason TEXT,
    dicom_status INTEGER,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    reported_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    owner TEXT,
    reports TEXT NOT NULL DEFAULT '[]',
    sr_sop_instance_uid TEXT,
    done_dir TEXT,
    failed_dir TEXT,
    disposed INTEGER NOT NULL DEFAULT 0,
    final_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_by_instance ON jobs(sop_instance_uid, content_sha256);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs(study_instance_uid);
"""

_PENDING = tuple(s.value for s in PENDING_STATES)


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


class Journal:
    """The jobs table of one spool. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
            else:
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.row_factory = sqlite3.Row
            if not readonly:
                self._create()
        except sqlite3.Error as exc:
            raise SpoolError(f"{path}: cannot open the journal ({exc})") from None

    def _create(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"{self.path}: the journal cannot use WAL mode (got {mode}); put the spool on a local disk")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "error_class" not in columns:  # a version 1 spool: the class was part of the reason text
            self._db.execute("ALTER TABLE jobs ADD COLUMN error_class TEXT")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def to_job(row: sqlite3.Row) -> Job:
        data = dict(row)
        data["state"] = JobState(data["state"])
        data["reports"] = tuple(json.loads(data["reports"] or "[]"))
        data["disposed"] = bool(data["disposed"])
        data.setdefault("error_class", None)
        return Job(**data)

    def job(self, job_id: int) -> Job:
        """The job with this id (raises KeyError if there is none)."""
        rows = self.rows("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise KeyError(job_id)
        return self.to_job(rows[0])

    def jobs(self, state: JobState | str | None = None, *, where: str = "", params: Sequence[Any] = ()) -> list[Job]:
        """All jobs (or those in one state, or matching an SQL condition), oldest first."""
        clauses, args = [], list(params)
        if state is not None:
            clauses.append("state=?")
            args.insert(0, JobState(state).value)
        if where:
            clauses.append(f"({where})")
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id"
        return [self.to_job(r) for r in self.rows(sql, args)]

    def count(self, state: JobState) -> int:
        return int(self.rows("SELECT COUNT(*) FROM jobs WHERE state=?", (state.value,))[0][0])

    def oldest_received_at(self) -> float | None:
        """Arrival time of the oldest job waiting for the worker."""
        row = self.rows("SELECT MIN(received_at) FROM jobs WHERE state=?", (JobState.RECEIVED.value,))[0]
        return float(row[0]) if row[0] is not None else None

    def pending_bytes(self) -> int:
        """Bytes of inputs still in the spool (received, processing, reported)."""
        return int(self.rows("SELECT COALESCE(SUM(size), 0) FROM jobs WHERE state IN (?, ?, ?)", _PENDING)[0][0])

    def next_delivery_due(self) -> float | None:
        """Earliest next_attempt_at among unclaimed reported jobs."""
        row = self.rows("SELECT MIN(next_attempt_at) FROM jobs WHERE state=? AND owner IS NULL",
                        (JobState.REPORTED.value,))[0]
        return float(row[0]) if row[0] is not None else None

    def summary(self) -> SpoolSummary:
        """Counts per state, pending bytes and the oldest pending job."""
        try:
            counts = {s.value: 0 for s in JobState}
            for row in self.rows("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[row[0]] = int(row[1])
            rows = self.rows("SELECT * FROM jobs WHERE state IN (?, ?, ?) ORDER BY received_at, id LIMIT 1", _PENDING)
            return SpoolSummary(counts, self.pending_bytes(), self.to_job(rows[0]) if rows else None, time.time())
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read {self.path}: {exc}") from None

    # -- changing ------------------------------------------------------------------------------

    def duplicate_of(self, db: sqlite3.Connection, sop_instance_uid: str, sha: str) -> int | None:
        """A job (not failed, not itself a duplicate) holding the same instance with the same content."""
        row = db.execute(
            "SELECT id FROM jobs WHERE sop_instance_uid=? AND content_sha256=? AND state<>? "
            "AND NOT (state=? AND reason LIKE 'duplicate of job%') ORDER BY id LIMIT 1",
            (sop_instance_uid, sha, JobState.FAILED.value, JobState.SKIPPED.value),
        ).fetchone()
        return int(row[0]) if row is not None else None

    def claim(self, limit: int, owner: str) -> list[int]:
        """Move up to `limit` received jobs (oldest first) to processing, owned by `owner`."""
        with self.write() as db:
            ids = [int(r[0]) for r in db.execute("SELECT id FROM jobs WHERE state=? ORDER BY id LIMIT ?",
                                                 (JobState.RECEIVED.value, limit))]
            if ids:
                db.execute(f"UPDATE jobs SET state=?, owner=?, updated_at=? WHERE id IN ({_marks(ids)})",
                           (JobState.PROCESSING.value, owner, time.time(), *ids))
        return ids

    def claim_for_delivery(self, owner: str, *, quiet_s: float, now: float, ignore_quiet: bool) -> list[list[int]]:
        """Claim reported jobs due for delivery, grouped by study (quiet studies only, with a quiet time)."""
        groups: dict[str | None, list[int]] = {}
        with self.write() as db:
            for row in db.execute("SELECT id, study_instance_uid FROM jobs WHERE state=? AND owner IS NULL "
                                  "AND next_attempt_at<=? ORDER BY id", (JobState.REPORTED.value, now)):
                groups.setdefault(row[1], []).append(int(row[0]))
            if quiet_s > 0 and not ignore_quiet:
                for study in [s for s in groups if s is not None]:
                    last, waiting = db.execute(
                        "SELECT MAX(received_at), SUM(state IN (?, ?)) FROM jobs WHERE study_instance_uid=?",
                        (JobState.RECEIVED.value, JobState.PROCESSING.value, study),
                    ).fetchone()
                    if (waiting or 0) > 0 or (last is not None and now - float(last) < quiet_s):
                        del groups[study]
            ids = [i for group in groups.values() for i in group]
            if ids:
                db.execute(f"UPDATE jobs SET owner=? WHERE id IN ({_marks(ids)})", (owner, *ids))
        return list(groups.values())

    def mark_reported(self, job_id: int, report_files: Sequence[str], sr_sop_instance_uid: str) -> None:
        now = time.time()
        with self.write() as db:
            db.execute("UPDATE jobs SET state=?, owner=NULL, reports=?, sr_sop_instance_uid=?, reported_at=?, "
                       "updated_at=?, attempts=0, next_attempt_at=0 WHERE id=?",
                       (JobState.REPORTED.value, json.dumps(list(report_files)), sr_sop_instance_uid, now, now, job_id))

    def mark_final(self, job_id: int, state: JobState, *, error_class: str | None, reason: str | None,
                   dicom_status: int | None) -> None:
        now = time.time()
        with self.write() as db:
            db.execute("UPDATE jobs SET state=?, error_class=COALESCE(?, error_class), reason=COALESCE(?, reason), "
                       "dicom_status=?, owner=NULL, finished_at=?, updated_at=? WHERE id=?",
                       (state.value, error_class, reason, dicom_status, now, now, job_id))

    def defer(self, job_ids: Sequence[int], reason: str, *, initial_s: float, max_s: float) -> float:
        """Count a delivery attempt and schedule the next with exponential backoff; the delay of the last job."""
        now = time.time()
        delay = initial_s
        with self.write() as db:
            for job_id in job_ids:
                attempts = int(db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0]) + 1
                delay = min(max_s, initial_s * (2 ** min(attempts - 1, 30)))
                db.execute("UPDATE jobs SET attempts=?, next_attempt_at=?, reason=?, owner=NULL, updated_at=? "
                           "WHERE id=?", (attempts, now + delay, reason, now, job_id))
        return delay

    def release(self, job_ids: Sequence[int], *, count_attempt: bool,
                max_attempts: int | None = None) -> list[tuple[int, str, int]]:
        """Give claims back: processing jobs return to received (with one more attempt if
        `count_attempt`), reported ones lose their delivery claim. A processing job that reaches
        `max_attempts` keeps its claim and is returned as ``failed``, for the caller to finish.
        Returns ``(id, state, attempts)`` of each job released, as it stands afterwards."""
        if not job_ids:
            return []
        now = time.time()
        out = []
        with self.write() as db:
            rows = db.execute(f"SELECT id, state, attempts FROM jobs WHERE id IN ({_marks(job_ids)}) "
                              "AND owner IS NOT NULL AND state IN (?, ?)",
                              (*job_ids, JobState.PROCESSING.value, JobState.REPORTED.value)).fetchall()
            for job_id, state, attempts in rows:
                if state == JobState.REPORTED.value:
                    db.execute("UPDATE jobs SET owner=NULL WHERE id=?", (job_id,))
                    out.append((int(job_id), state, int(attempts)))
                    continue
                attempts += int(count_attempt)
                if max_attempts is not None and attempts >= max_attempts:
                    db.execute("UPDATE jobs SET attempts=? WHERE id=?", (attempts, job_id))
                    out.append((int(job_id), JobState.FAILED.value, int(attempts)))
                else:
                    db.execute("UPDATE jobs SET state=?, owner=NULL, attempts=?, updated_at=? WHERE id=?",
                               (JobState.RECEIVED.value, attempts, now, job_id))
                    out.append((int(job_id), JobState.RECEIVED.value, int(attempts)))
        return out

    def mark_disposed(self, job_id: int, final_path: str | None) -> None:
        with self.write() as db:
            db.execute("UPDATE jobs SET disposed=1, final_path=? WHERE id=?", (final_path, job_id))
