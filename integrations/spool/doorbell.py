"""A doorbell between processes: a ``threading.Event``-like signal that no participant's death can block.

The spool rings one when a job arrives (the worker's) and one when a report is ready (delivery's).
When the worker runs in a process of its own, both must cross the process boundary. Not
``multiprocessing.Event``: its ``set()`` waits for every sleeper to wake, so a worker killed
while waiting would hang the node's C-STORE handler for good.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Any


class Doorbell:
    """A threading.Event-like signal between processes that no participant's death can block.

    A pipe: :meth:`set` writes a byte without blocking (a full pipe is rung already; a reader
    that is gone is ignored), :meth:`wait` waits until the pipe is readable, :meth:`clear`
    drains it. Several processes may ring; one process waits. Picklable for ``spawn``.
    """

    def __init__(self) -> None:
        self._reader, self._writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
        self._nonblocking()

    def _nonblocking(self) -> None:
        os.set_blocking(self._writer.fileno(), False)
        os.set_blocking(self._reader.fileno(), False)  # clear() drains; poll() waits either way

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self._writer.fileno(), b"!")

    def is_set(self) -> bool:
        return self._reader.poll(0)

    def wait(self, timeout: float | None = None) -> bool:
        return self._reader.poll(timeout)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._reader.fileno(), 4096):
                pass

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._nonblocking()
