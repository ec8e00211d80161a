"""The spool's journal: one SQLite file in WAL mode holding every job and its state
(the states and rows are in :mod:`.rows`).

Every change is one write transaction (``BEGIN IMMEDIATE`` takes the write lock across processes;
``synchronous=FULL``: a commit is on disk). Several processes may share one journal. Reading it
read-only (``medblip status``) creates and changes nothing, and gives the same
:class:`SpoolSummary` as the running service.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip_dicom.integrations.spool.locked import LockedConnection
from medblip_dicom.integrations.spool.rows import (  # noqa: F401 - re-exported: the journal's vocabulary
    ADDED_COLUMNS, FINAL_STATES, PENDING_STATES, SCHEMA, SCHEMA_VERSION, Job, JobState, SpoolError, SpoolSummary,
)

_PENDING = tuple(s.value for s in PENDING_STATES)


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


class Journal(LockedConnection):
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
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in ADDED_COLUMNS.items():  # an older journal: add what it lacks, keep every row
            if columns and name not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def to_job(row: sqlite3.Row) -> Job:
        data = dict(row)
        data["state"] = JobState(data["state"])
        data["reports"] = tuple(json.loads(data["reports"] or "[]"))
        data["disposed"] = bool(data["disposed"])
        for flag in ("selected", "representative"):
            data[flag] = bool(data.get(flag))
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

    def claimable(self) -> tuple[int, float | None]:
        """How many jobs the worker may claim now (received and selected), and when the oldest arrived."""
        row = self.rows("SELECT COUNT(*), MIN(received_at) FROM jobs WHERE state=? AND selected=1",
                        (JobState.RECEIVED.value,))[0]
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

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
            try:
                held = int(self.rows("SELECT COUNT(*) FROM jobs WHERE state=? AND selected=0",
                                     (JobState.RECEIVED.value,))[0][0])
                skipped_by = {str(r[0] or "other"): int(r[1]) for r in self.rows(
                    "SELECT error_class, COUNT(*) FROM jobs WHERE state=? GROUP BY error_class ORDER BY 2 DESC",
                    (JobState.SKIPPED.value,))}
            except sqlite3.OperationalError:  # an older journal read read-only: it has no such columns yet
                held, skipped_by = 0, {}
            return SpoolSummary(counts, self.pending_bytes(), self.to_job(rows[0]) if rows else None, time.time(),
                                held, skipped_by)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read {self.path}: {exc}") from None

    # -- changing ------------------------------------------------------------------------------

    def duplicate_of(self, db: sqlite3.Connection, sop_instance_uid: str, sha: str) -> tuple[int, bool] | None:
        """The job that holds this SOPInstanceUID already, and whether its content is the same.

        One SOPInstanceUID, one report: the first job of a UID holds it unless it failed (a failed
        job made no report, so a re-send, corrected or not, is worked again); a job skipped as a
        duplicate holds nothing. A holder with the same content is preferred (a journal written
        before this rule may hold two contents of one UID).
        """
        rows = db.execute(
            "SELECT id, content_sha256 FROM jobs WHERE sop_instance_uid=? AND state<>? "
            "AND NOT (state=? AND (error_class='Duplicate' OR reason LIKE 'duplicate of job%')) ORDER BY id",
            (sop_instance_uid, JobState.FAILED.value, JobState.SKIPPED.value),
        ).fetchall()
        for row in rows:
            if row[1] == sha:
                return int(row[0]), True
        return (int(rows[0][0]), False) if rows else None

    def claim(self, limit: int, owner: str) -> list[int]:
        """Move up to `limit` received jobs (oldest first) to processing, owned by `owner`."""
        with self.write() as db:
            ids = [int(r[0]) for r in db.execute("SELECT id FROM jobs WHERE state=? AND selected=1 ORDER BY id LIMIT ?",
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

    # -- selection (see medblip_dicom.integrations.worker.series_hold) ------------------------------------

    def unselected(self) -> list[Job]:
        """Received jobs that selection has not decided on yet, oldest first."""
        return self.jobs(JobState.RECEIVED, where="selected=0")

    def select(self, job_ids: Sequence[int], *, note: str | None = None, representative: bool = False) -> None:
        """Let the worker claim these jobs (with the note their SR carries)."""
        if not job_ids:
            return
        with self.write() as db:
            db.execute(f"UPDATE jobs SET selected=1, representative=?, note=COALESCE(?, note), updated_at=? "
                       f"WHERE id IN ({_marks(job_ids)}) AND state=?",
                       (int(representative), note, time.time(), *job_ids, JobState.RECEIVED.value))

    def decide_series(self, representative_ids: Sequence[int], note: str, skipped: Sequence[tuple[int, str]]) -> None:
        """One series decided, in one transaction: its representative may be claimed, the others are
        skipped (a crash leaves either the whole decision or none of it)."""
        now = time.time()
        with self.write() as db:
            db.execute(f"UPDATE jobs SET selected=1, representative=1, note=?, updated_at=? "
                       f"WHERE id IN ({_marks(representative_ids)}) AND state=?",
                       (note, now, *representative_ids, JobState.RECEIVED.value))
            for job_id, reason in skipped:
                db.execute("UPDATE jobs SET state=?, error_class='NotRepresentative', reason=?, owner=NULL, "
                           "finished_at=?, updated_at=? WHERE id=? AND state=?",
                           (JobState.SKIPPED.value, reason, now, now, job_id, JobState.RECEIVED.value))

    def captioned_for_series(self, series_uid: str) -> Job | None:
        """The job that speaks for a series already (its representative, unless it failed)."""
        found = self.jobs(where="series_instance_uid=? AND representative=1 AND state<>?",
                          params=(series_uid, JobState.FAILED.value))
        return found[0] if found else None

    def record_batch(self, size: int, seconds: float) -> None:
        """One model batch done (for the metrics of the service, which may be another process)."""
        with self.write() as db:
            db.execute("INSERT INTO batches (at, size, seconds) VALUES (?, ?, ?)", (time.time(), size, seconds))

    def mark_disposed(self, job_id: int, final_path: str | None) -> None:
        with self.write() as db:
            db.execute("UPDATE jobs SET disposed=1, final_path=? WHERE id=?", (final_path, job_id))


def open_readonly_summary(root: str | os.PathLike[str]) -> SpoolSummary:
    """Summarise a spool without creating or changing anything (for ``medblip status``)."""
    path = Path(root) / "journal.sqlite"
    if not path.is_file():
        raise SpoolError(f"{root} is not a spool folder (no journal.sqlite in it)")
    journal = Journal(path, readonly=True)
    try:
        return journal.summary()
    finally:
        journal.close()
