"""``medblip pull --between 20:00-06:00``: retrieve only inside a daily time window.

A large query is polite to a production archive when its retrieves run at night. Before each
study's retrieve, the pull waits until the window is open (local time); a study already being
retrieved when the window closes is finished, the next one waits for the next opening. A window
may span midnight (``20:00-06:00``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A daily window [start, end) in local time; `end` before `start` spans midnight."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> Window:
        """``HH:MM-HH:MM``; ValueError naming ``--between`` otherwise."""
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text or "")
        try:
            if match is None:
                raise ValueError
            start = dt.time(int(match.group(1)), int(match.group(2)))
            end = dt.time(int(match.group(3)), int(match.group(4)))
        except ValueError:
            raise ValueError(f"--between {text!r} is not HH:MM-HH:MM (for example 20:00-06:00)") from None
        if start == end:
            raise ValueError(f"--between {text!r} is empty: start and end are the same time")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def is_open(self, now: dt.datetime) -> bool:
        t = now.time()
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def seconds_until_open(self, now: dt.datetime) -> float:
        """0 when open, else the seconds until the next start."""
        if self.is_open(now):
            return 0.0
        opening = dt.datetime.combine(now.date(), self.start, tzinfo=now.tzinfo)
        if opening <= now:
            opening += dt.timedelta(days=1)
        return (opening - now).total_seconds()

    def wait(self, stop: threading.Event, clock: Callable[[], dt.datetime] = dt.datetime.now,
             tell: Callable[[str], None] | None = None, step_s: float = 60.0) -> bool:
        """Block until the window is open (True) or `stop` is set (False); `tell` hears once why."""
        told = False
        while not stop.is_set():
            remaining = self.seconds_until_open(clock())
            if remaining <= 0:
                return True
            if not told:
                message = f"waiting for the retrieve window {self} (opens in {remaining / 3600:.1f} h)"
                (tell or logger.info)(message)
                told = True
            stop.wait(min(remaining, step_s))
        return False
