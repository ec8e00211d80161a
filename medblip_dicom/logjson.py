"""``--log-format json``: one JSON object per log line, for log shippers.

Fields: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``process``, ``thread``, and,
found in the message, ``job`` (the first "job N") and ``uids`` (every DICOM UID it names), so that a
log search can filter by them; ``exception`` holds a traceback when there is one. The messages are
the same as in the text format: they carry job numbers, UIDs, states and timings, never patient
names or IDs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

_JOB = re.compile(r"\bjobs? (\d+)\b")
_UID = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9][0-9]*)){3,}(?![\w.])")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": message,
            "process": record.process, "thread": record.threadName,
        }
        job = _JOB.search(message)
        if job:
            out["job"] = int(job.group(1))
        uids = _UID.findall(message)
        if uids:
            out["uids"] = uids
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and redacted: medblip_dicom.logsafety)
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)
