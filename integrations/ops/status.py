"""``medblip status``: what a spool holds, as text for people or JSON for monitoring."""

from __future__ import annotations

import json
import time
from typing import Any

from medblip_dicom.integrations.spool import SpoolSummary


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def summary_dict(root: str, summary: SpoolSummary) -> dict[str, Any]:
    """The summary as plain data (``medblip status --json``)."""
    oldest = summary.oldest_pending
    return {
        "spool": root,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(summary.now)),
        "queue_depth": summary.queue_depth,
        "done": summary.done,
        "failed": summary.failed,
        "states": summary.counts,
        "held_for_series": summary.held,
        "skipped_by": summary.skipped_by,
        "pending_bytes": summary.pending_bytes,
        "oldest_pending": None if oldest is None else {
            "job": oldest.id,
            "state": oldest.state.value,
            "age_s": round(summary.now - oldest.received_at, 3),
            "attempts": oldest.attempts,
            "study_instance_uid": oldest.study_instance_uid,
            "last_error": oldest.error,
        },
    }


def format_summary(root: str, summary: SpoolSummary) -> str:
    """The summary as a few aligned lines."""
    c = summary.counts
    lines = [
        f"spool          {root}",
        f"queue depth    {summary.queue_depth}  (received {c['received']}, of which held for their series "
        f"{summary.held}; processing {c['processing']}, reported {c['reported']}; {_bytes(summary.pending_bytes)})",
        f"done           {summary.done}  (delivered {c['delivered']}, skipped {c['skipped']})",
        f"failed         {summary.failed}",
    ]
    if summary.skipped_by:
        lines.append("skipped by     " + ", ".join(f"{kind} {n}" for kind, n in summary.skipped_by.items()))
    oldest = summary.oldest_pending
    if oldest is None:
        lines.append("oldest pending none")
    else:
        text = (f"oldest pending job {oldest.id}, {oldest.state.value}, received "
                f"{_age(summary.now - oldest.received_at)} ago")
        if oldest.attempts:
            text += f", {oldest.attempts} delivery attempt(s)"
        if oldest.error and oldest.state.value == "reported":
            text += f"; last error: {oldest.error}"
        lines.append(text)
    return "\n".join(lines)


def format_json(root: str, summary: SpoolSummary) -> str:
    return json.dumps(summary_dict(root, summary), indent=2)
