"""The journal's rows: job states, :class:`Job`, :class:`SpoolSummary` and the table they live in.

Job states::

    received -> processing -> reported -> delivered
       |  (selection: held until ``selected``)
       |             |            |
       |             +-> failed <-+        (error class, reason and DICOM status are columns)
       +-------------+-> skipped           (rules, not the representative, non-images, our own outputs,
                                            duplicates)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from medblip_dicom.errors import MedblipError

SCHEMA_VERSION = 3

#: Columns added since the first version of the journal: added to an older journal when it is opened.
ADDED_COLUMNS = {
    "error_class": "TEXT",  # v2: the error class apart from the reason text
    "facts": "TEXT",  # v3: the selection facts (JSON), read at admission
    "selected": "INTEGER NOT NULL DEFAULT 0",  # v3: passed selection; the worker may claim it
    "representative": "INTEGER NOT NULL DEFAULT 0",  # v3: captioned for its whole series
    "note": "TEXT",  # v3: what its SR says beyond the caption (the series it speaks for)
}


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
    facts: str | None = None
    selected: bool = False
    representative: bool = False
    note: str | None = None

    @property
    def error(self) -> str | None:
        """The reason as people read it: ``ErrorClass: message`` (or the message alone)."""
        if self.reason is None:
            return None
        return f"{self.error_class}: {self.reason}" if self.error_class else self.reason


@dataclass(frozen=True)
class SpoolSummary:
    """Counts per state, pending bytes and the oldest pending job: what ``medblip status`` prints.

    ``held``: received jobs that selection has not released yet (their series is not quiet yet);
    ``skipped_by``: skipped jobs by kind (the error class: SelectionRule, Localizer,
    NotRepresentative, LateInstance, NotAnImageError, Duplicate, OwnOutput).
    """

    counts: dict[str, int]
    pending_bytes: int
    oldest_pending: Job | None
    now: float
    held: int = 0
    skipped_by: dict[str, int] = field(default_factory=dict)

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
    final_path TEXT,
    facts TEXT,
    selected INTEGER NOT NULL DEFAULT 0,
    representative INTEGER NOT NULL DEFAULT 0,
    note TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_by_instance ON jobs(sop_instance_uid, content_sha256);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs(study_instance_uid);
CREATE INDEX IF NOT EXISTS jobs_by_series ON jobs(series_instance_uid);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    size INTEGER NOT NULL,
    seconds REAL NOT NULL
);
"""
