"""One SQLite connection behind a lock: the write transaction and the read that the spool's journal
and the review station's tables (in the same database file) both use."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any


class LockedConnection:
    """``close``, ``write`` (one ``BEGIN IMMEDIATE`` transaction) and ``rows`` over ``self._db``,
    serialised by ``self._lock``; the subclass opens both."""

    _db: sqlite3.Connection
    _lock: threading.RLock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: serialised with every other writer of the file)."""
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
