"""Serve an ASGI app under uvicorn so that idle and slow clients cannot shut it.

uvicorn alone counts open sockets against ``limit_concurrency`` and never times out a client that is
slow to send its request head or its body, so a few dozen sockets that send nothing (or a byte a
second) took every place and each real request was answered 503. :func:`guarded_config` serves an
app with these rules instead (figures in :class:`ServeLimits`):

- a request head (request line and headers) must be complete within ``header_timeout_s`` of the
  connection, or of the previous answer on a kept-alive connection; else the connection is closed,
  with a 408 answer when part of a head came;
- a request body must keep coming at ``min_body_bytes_per_s`` or more, averaged over the last
  ``body_window_s`` (the first window is the grace); else the connection is closed. Time while the
  server itself stopped reading (the app is slow to take the body) does not count against the client;
- one client address holds at most ``max_per_address`` connections (more are closed at once); at
  ``max_connections`` the oldest connection still waiting for a request head makes room;
- at most ``max_requests`` requests are served at once, 503 with ``Retry-After`` beyond: requests,
  not sockets, so idle connections never take a sender's place;
- an idle kept-alive connection is closed after ``keep_alive_s`` (uvicorn's own timer).

The idle connection is never answered 503: it is simply timed out. With TLS, asyncio calls the
protocol only after the handshake, so a client that never finishes its handshake is bounded by
asyncio's handshake timeout, not by the head timeout.

uvicorn has no public hook for any of this: :func:`guarded_protocol` subclasses its h11 protocol,
and :func:`check` (run when a server is built, and by a test) fails with one sentence if a uvicorn
release moved what the subclass relies on, as :mod:`.pynetdicom_compat` does for pynetdicom.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

from medblip_dicom.errors import MissingDependencyError

from medblip_dicom.integrations.config.checks import ConfigError

logger = logging.getLogger(__name__)

#: The uvicorn minor release the protocol subclass was written and tested against.
TESTED_SERIES = "0.55"
#: How often a request body's rate is looked at.
_TICK_S = 1.0
#: Warnings about refused or cut connections come at most this often per kind (with a count).
_LOG_EVERY_S = 30.0
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class ServeLimits:
    """What one HTTP server allows a client; the defaults are those of the STOW-RS endpoint.

    header_timeout_s: seconds to send a whole request head. body_window_s and min_body_bytes_per_s:
    a body must bring at least this rate over the last window (1 KiB/s over 10 s by default: a
    sender on a 10 kbit/s line passes, a byte a second does not). max_per_address: connections one
    client address may hold. max_connections: connections in all. max_requests: requests served at
    once. keep_alive_s: how long an idle kept-alive connection stays open.
    """

    header_timeout_s: float = 10.0
    body_window_s: float = 10.0
    min_body_bytes_per_s: float = 1024.0
    max_per_address: int = 8
    max_connections: int = 512
    max_requests: int = 64
    keep_alive_s: int = 5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"ServeLimits.{f.name} must be a number above 0, got {value!r}")
        if self.max_per_address > self.max_connections:
            raise ConfigError("ServeLimits.max_per_address cannot exceed max_connections "
                              f"({self.max_per_address} > {self.max_connections})")


#: For a web app that browsers use (the review station): a browser opens up to 6 connections to one
#: site, and several reviewers may come from one address (a NAT, a reverse proxy), so one address
#: may hold more; the other figures are the defaults.
BROWSER_LIMITS = ServeLimits(max_per_address=32)


@functools.cache
def check() -> None:
    """Raise :class:`MissingDependencyError` unless the installed uvicorn has every hook used here."""
    import uvicorn
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def names(function: Any) -> set[str]:
        code = getattr(function, "__code__", None)
        return set(code.co_names) if code is not None else set()

    config_keys = set(inspect.signature(uvicorn.Config).parameters)
    missing = [name for name, ok in (
        *((f"H11Protocol.{m}", callable(getattr(H11Protocol, m, None)))
          for m in ("connection_made", "connection_lost", "data_received", "on_response_complete")),
        ("H11Protocol().conn and .loop", {"conn", "loop"} <= names(H11Protocol.__init__)),
        ("H11Protocol().transport, .client and .flow",
         {"transport", "client", "flow"} <= names(getattr(H11Protocol, "connection_made", None))),
        ("FlowControl().read_paused", "read_paused" in names(FlowControl.__init__)),
        ("Config(http=<protocol class>, limit_concurrency, timeout_keep_alive)",
         {"http", "limit_concurrency", "timeout_keep_alive"} <= config_keys),
    ) if not ok]
    if missing:
        raise MissingDependencyError(
            f"uvicorn {uvicorn.__version__} lacks {', '.join(missing)}, which medblip-dicom's HTTP guard was written "
            f"for (uvicorn {TESTED_SERIES}.x); install uvicorn=={TESTED_SERIES}.*"
        )


class ConnectionGuard:
    """The connections of one server: per-address counts, those awaiting a head, what was refused.

    Used from the server's event-loop thread only (other threads may read the counters).
    """

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.per_address: Counter[str] = Counter()
        self.admitted: set[Any] = set()
        #: Connections waiting for a request head, oldest first (the ones evicted when full).
        self.waiting: dict[Any, None] = {}
        self.active_requests = 0
        #: address_limit, full, evicted, head_timeout, slow_body, busy: how often each happened.
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def note(self, kind: str, message: str, *args: Any) -> None:
        """Count one event of `kind`; log it now unless one was logged less than 30 s ago."""
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self._logged.get(kind, float("-inf")) >= _LOG_EVERY_S:
            logger.warning(message + " (%d such events so far)", *args, self.counts[kind])
            self._logged[kind] = now

    def admit(self, conn: Any) -> bool:
        """Take a new connection in, or say no (the caller closes it)."""
        address = conn.guard_address
        if self.per_address[address] >= self.limits.max_per_address:
            self.note("address_limit", "HTTP connection from %s refused: it already holds %d", address,
                      self.per_address[address])
            return False
        if len(self.admitted) >= self.limits.max_connections:
            if not self.waiting:
                self.note("full", "HTTP connection from %s refused: %d connections are busy", address,
                          len(self.admitted))
                return False
            oldest = next(iter(self.waiting))
            self.note("evicted", "HTTP connection from %s closed to make room: it sent no request head yet",
                      oldest.guard_address)
            self.release(oldest)
            oldest.transport.close()
        self.per_address[address] += 1
        self.admitted.add(conn)
        return True

    def release(self, conn: Any) -> None:
        """Forget a connection (idempotent)."""
        self.waiting.pop(conn, None)
        if conn in self.admitted:
            self.admitted.discard(conn)
            self.per_address[conn.guard_address] -= 1
            if self.per_address[conn.guard_address] <= 0:
                del self.per_address[conn.guard_address]


def guarded_protocol(guard: ConnectionGuard) -> type:
    """uvicorn's h11 protocol with the head timeout, the body rate and the per-address count of `guard`."""
    check()
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    limits = guard.limits

    class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
        """A connection that follows its phase: waiting for a head, receiving a body, or served."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.guard_address = ""
            self.guard_phase = ""  # "head", "body", "served", "refused" or "closed"
            self.guard_timer: asyncio.TimerHandle | None = None
            self.guard_bytes = 0
            self.guard_marks: deque[tuple[float, int]] = deque()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.guard_address = self.client[0] if self.client else ""
            if not guard.admit(self):
                self.guard_phase = "refused"
                transport.close()
                return
            self._guard_follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._guard_stop()
            self.guard_phase = "closed"
            guard.release(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.guard_phase == "refused":  # bytes that were on their way before the close: never served
                return
            self.guard_bytes += len(data)
            super().data_received(data)
            self._guard_follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._guard_follow()

        def _guard_stop(self) -> None:
            if self.guard_timer is not None:
                self.guard_timer.cancel()
                self.guard_timer = None
            guard.waiting.pop(self, None)

        def _guard_follow(self) -> None:
            """Start the clock of the phase the connection is in, if it just entered it."""
            if self.guard_phase in ("refused", "closed"):
                return
            if self.transport.is_closing():
                self._guard_stop()
                return
            state = self.conn.their_state
            phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "served"
            if phase == self.guard_phase:
                return
            self._guard_stop()
            self.guard_phase = phase
            self.guard_bytes = 0
            if phase == "head":
                guard.waiting[self] = None
                self.guard_timer = self.loop.call_later(limits.header_timeout_s, self._guard_head_late)
            elif phase == "body":
                self.guard_marks = deque([(self.loop.time(), 0)])
                self.guard_timer = self.loop.call_later(_TICK_S, self._guard_body_tick)

        def _guard_head_late(self) -> None:
            self.guard_timer = None
            if self.guard_phase != "head" or self.transport.is_closing():
                return
            guard.note("head_timeout", "HTTP connection from %s closed: no whole request head within %g s",
                       self.guard_address, limits.header_timeout_s)
            if self.guard_bytes:  # part of a head came: say why (an idle connection is simply closed)
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

        def _guard_body_tick(self) -> None:
            self.guard_timer = None
            if self.guard_phase != "body" or self.transport.is_closing():
                return
            now = self.loop.time()
            marks = self.guard_marks
            if self.flow.read_paused:  # the server is not reading: the client cannot be slow meanwhile
                marks.clear()
            marks.append((now, self.guard_bytes))
            while len(marks) > 1 and now - marks[1][0] >= limits.body_window_s:
                marks.popleft()
            since, then = marks[0]
            elapsed = now - since
            if elapsed >= limits.body_window_s and self.guard_bytes - then < limits.min_body_bytes_per_s * elapsed:
                guard.note("slow_body", "HTTP connection from %s closed: its request body came at %.0f bytes/s, "
                           "under %g", self.guard_address, (self.guard_bytes - then) / elapsed,
                           limits.min_body_bytes_per_s)
                self.transport.close()
                return
            self.guard_timer = self.loop.call_later(_TICK_S, self._guard_body_tick)

    return GuardedH11Protocol


class RequestLimit:
    """ASGI middleware: at most ``guard.limits.max_requests`` HTTP requests in the app at once.

    Beyond, a request is answered at once with 503, ``Retry-After: 1`` and ``Connection: close``
    (a sender retries). Only requests count, never connections that have not sent a whole head.
    """

    def __init__(self, app: ASGIApp, guard: ConnectionGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        if guard.active_requests >= guard.limits.max_requests:
            guard.note("busy", "HTTP request answered 503: %d requests are being served", guard.active_requests)
            body = json.dumps({"error": f"busy: {guard.active_requests} requests are being served; "
                                        "try again in a second"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        guard.active_requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            guard.active_requests -= 1


def guarded_config(app: ASGIApp, *, limits: ServeLimits | None = None, **options: Any) -> tuple[Any, ConnectionGuard]:
    """A ``uvicorn.Config`` that serves `app` within `limits`, and the guard that counts its connections.

    `options` are uvicorn.Config's other keywords (host, port, ssl_certfile, log_level, ...); the
    protocol, uvicorn's own connection cap and the keep-alive time are set here and cannot be given.
    """
    import uvicorn

    taken = sorted({"http", "limit_concurrency", "timeout_keep_alive", "interface"} & set(options))
    if taken:
        raise TypeError(f"guarded_config sets {', '.join(taken)} itself")
    guard = ConnectionGuard(limits or ServeLimits())
    config = uvicorn.Config(RequestLimit(app, guard), http=guarded_protocol(guard), interface="asgi3",
                            limit_concurrency=None, timeout_keep_alive=guard.limits.keep_alive_s, **options)
    return config, guard
