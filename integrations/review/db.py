"""The review station's tables, in the spool's own SQLite journal (``SPOOL/journal.sqlite``, WAL).

Keeping them in the journal's database lets one transaction record a signature *and* enqueue the
signed report's delivery job (:mod:`.store`), and lets the review station, the watch folder and the
node share one file across processes. The tables only add to the journal; the ``jobs`` table is
the spool's (:mod:`medblip_dicom.integrations.spool.rows`).

Audit rows say who did what to which report and when (login, view, sign, reject, export, ...):
user names, UIDs and client addresses only, never a patient's name or ID.

Reviewers are never deleted: a removed one keeps its row (disabled, marked removed), so that every
signature stays attributable to a person. A journal written by an older release is upgraded in
place when it is opened (missing columns added, rows kept).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from medblip_dicom.integrations.spool.locked import LockedConnection
from medblip_dicom.integrations.spool.rows import SpoolError

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    ai_uid TEXT PRIMARY KEY,
    job_id INTEGER,
    study_uid TEXT,
    source_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    model_name TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '',
    caption TEXT NOT NULL,
    folder TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    current_uid TEXT,
    reason TEXT,
    decided_by TEXT,
    created_at REAL NOT NULL,
    decided_at REAL
);
CREATE INDEX IF NOT EXISTS review_items_by_state ON review_items(state, created_at);
CREATE TABLE IF NOT EXISTS review_signed (
    uid TEXT PRIMARY KEY,
    ai_uid TEXT NOT NULL,
    predecessor_uid TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL,
    text TEXT NOT NULL,
    edited INTEGER NOT NULL,
    signed_at REAL NOT NULL,
    file TEXT NOT NULL,
    job_id INTEGER
);
CREATE TABLE IF NOT EXISTS review_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    username TEXT,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS review_users (
    username TEXT PRIMARY KEY,
    person_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    removed_at REAL,
    last_login REAL,
    epoch INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS review_tokens (
    token_sha256 TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_sessions (
    id_sha256 TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS review_login_failures (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    failures INTEGER NOT NULL,
    refused INTEGER NOT NULL DEFAULT 0,
    last_failure REAL NOT NULL,
    PRIMARY KEY (scope, name, address)
);
CREATE INDEX IF NOT EXISTS review_login_failures_by_time ON review_login_failures(last_failure);
CREATE TABLE IF NOT EXISTS review_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


#: Columns added to the first release's tables (name, declaration): an older journal gets them on open.
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "review_users": (("enabled", "INTEGER NOT NULL DEFAULT 1"), ("removed_at", "REAL"), ("last_login", "REAL"),
                     ("epoch", "INTEGER NOT NULL DEFAULT 0")),
    "review_sessions": (("epoch", "INTEGER NOT NULL DEFAULT 0"),),
}
#: Tables of older releases that nothing reads any more (the per-name throttle: review_login_failures replaced it).
DROPPED_TABLES = ("review_throttle",)


class ReviewDatabase(LockedConnection):
    """One connection to the spool's journal, behind a lock; the review tables created on open."""

    #: How long a write waits for another process's write transaction before it fails.
    BUSY_TIMEOUT_S = 30.0

    def __init__(self, spool_dir: str | Path) -> None:
        self.root = Path(spool_dir)
        self.path = self.root / "journal.sqlite"
        if not self.path.is_file():
            raise SpoolError(f"{self.root} is not a spool folder (no journal.sqlite in it); start a service "
                             "with this spool once, or pass the right --spool")
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=self.BUSY_TIMEOUT_S)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(self.BUSY_TIMEOUT_S * 1000)}")
            self._db.executescript(SCHEMA)
            self._upgrade()
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot open the review tables ({exc})") from None

    def _upgrade(self) -> None:
        """Bring the tables of an older release up to :data:`SCHEMA` in place: add the missing
        columns (every row kept, so reviewers, tokens and sessions survive) and drop dead tables."""
        with self.write() as db:  # one writer at a time, so processes opening together add each column once
            for table, columns in ADDED_COLUMNS.items():
                present = {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns:
                    if name not in present:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
                        logger.info("review tables: added %s.%s to %s", table, name, self.path)
            for table in DROPPED_TABLES:
                db.execute(f"DROP TABLE IF EXISTS {table}")

    def audit(self, username: str | None, action: str, target: str | None = None, detail: str | None = None,
              db: sqlite3.Connection | None = None) -> None:
        """Record one action (inside the caller's transaction when `db` is given)."""
        args = (time.time(), username, action, target, detail)
        sql = "INSERT INTO review_audit (at, username, action, target, detail) VALUES (?, ?, ?, ?, ?)"
        if db is not None:
            db.execute(sql, args)
        else:
            with self.write() as conn:
                conn.execute(sql, args)
        logger.info("review audit: %s %s %s", username or "-", action, target or "")

    def audit_rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows("SELECT * FROM review_audit ORDER BY id DESC LIMIT ?", (limit,))]

    def meta(self, key: str, make: Any) -> str:
        """A per-spool value, created once by `make()` (e.g. the salt of pseudonymous reviewer ids)."""
        with self.write() as db:
            row = db.execute("SELECT value FROM review_meta WHERE key=?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
            value = str(make())
            db.execute("INSERT INTO review_meta (key, value) VALUES (?, ?)", (key, value))
            return value
