"""The spool's journal read from outside, without changing it (works while a service runs or after a kill)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def journal_rows(spool: Path, columns: str = "id, state, sop_instance_uid, error_class, reason, dicom_status, owner, "
                                           "attempts, origin, name, disposed, final_path") -> list[dict[str, Any]]:
    """The spool's jobs, read without changing anything (works while the service runs or after a kill)."""
    path = spool / "journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT {columns} FROM jobs ORDER BY id")]
    finally:
        db.close()


def state_counts(spool: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in journal_rows(spool, "state"):
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


def pending(spool: Path) -> int:
    c = state_counts(spool)
    return c.get("received", 0) + c.get("processing", 0) + c.get("reported", 0)
