"""Which sink already has which report: ``SPOOL/delivery/ledger.sqlite``.

A job is ``delivered`` once every sink has each of its files. While one sink waits (down, or
answering "not now"), the others must not be sent the same report again at each retry: an HL7
receiver would file a second result, a FHIR server would count a second update. So each file a
sink took is recorded here, keyed by the sink's name (kind and destination: a destination changed
in the configuration is a new sink and gets every pending report) and the report's path in the
spool, and the next attempt sends it only to the sinks that lack it. A job's rows go when it ends.

A process killed between a sink's acknowledgement and the record sends that file to that sink once
more after the restart; every sink makes that harmless (stable SR UIDs, HL7 MSH-10 derived from the
report's UID, FHIR conditional update by an identifier derived from the report).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    sink TEXT NOT NULL,
    report TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (sink, report)
);
CREATE INDEX IF NOT EXISTS sent_by_job ON sent(job_id);
"""


class Ledger:
    """The delivery ledger of one spool (thread-safe; several processes may share it)."""

    def __init__(self, spool_root: Path) -> None:
        folder = Path(spool_root) / "delivery"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "ledger.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing committed
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def has(self, sink: str, reports: Sequence[str]) -> set[str]:
        """The reports among `reports` that `sink` already took."""
        if not reports:
            return set()
        with self._lock:
            marks = ",".join("?" * len(reports))
            rows = self._db.execute(f"SELECT report FROM sent WHERE sink=? AND report IN ({marks})",  # noqa: S608
                                    (sink, *reports)).fetchall()
        return {r[0] for r in rows}

    def record(self, sink: str, taken: Iterable[tuple[int, str]]) -> None:
        """`sink` took these ``(job_id, report)``."""
        rows = [(sink, report, job_id, time.time()) for job_id, report in taken]
        if not rows:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO sent (sink, report, job_id, at) VALUES (?,?,?,?)", rows)

    def forget(self, job_ids: Iterable[int]) -> None:
        """The jobs ended: their rows are no longer needed."""
        ids = list(job_ids)
        if not ids:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM sent WHERE job_id=?", [(i,) for i in ids])

    def prune(self, pending: Iterable[int]) -> int:
        """Remove the rows of every job not in `pending` (jobs that ended while a process died); returns how many."""
        keep = set(pending)
        with self._lock:
            jobs = {r[0] for r in self._db.execute("SELECT DISTINCT job_id FROM sent")}
        gone = jobs - keep
        self.forget(gone)
        return len(gone)
