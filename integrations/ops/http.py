"""The operations endpoint of a service: ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP.

``[metrics] host`` / ``port`` (``--metrics-port``); it binds to 127.0.0.1 unless told otherwise.
It answers GET (and HEAD) for exactly these three paths; anything else is 404 (405 for another
method), no request body is read and no query is interpreted, so there is no input to trust.

- ``/metrics``: the Prometheus text format of the service's registry (:mod:`.metrics`).
- ``/healthz``: 200 while the process and its threads (and its worker process) run, else 503.
- ``/readyz``: 200 when the model is loaded, the spool is writable, its disk is above its floor and
  the destination was reached at its last try (or is not configured), else 503. Both answer JSON:
  ``{"ok": false, "checks": {"spool_writable": true, "disk": "12 MiB free, floor 256 MiB", ...}}``
  where every failed check holds the reason instead of ``true``.

Idle and slow clients cannot hold it (each connection is served by a thread of its own, and a
thread is the scarce thing): a client must send its whole request head within ``head_timeout_s``
(else it is answered 408 and closed, or just closed when it sent nothing), every read or write
waits at most ``io_timeout_s``, one request is served per connection, and at most
``max_connections`` connections (``max_per_address`` from one client address) are served at once;
a connection beyond is answered 503 at once, without a thread, and closed. So a few sockets left
open by one address never keep Prometheus or a load balancer from their answer.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

Checks = Callable[[], dict[str, Any]]

#: Seconds a client has to send its whole request head (request line and headers).
HEAD_TIMEOUT_S = 5.0
#: Seconds one read or write on a connection may wait (an answer the client does not take).
IO_TIMEOUT_S = 10.0
#: Connections served at once, one thread each.
MAX_CONNECTIONS = 32
#: Connections one client address may hold at once.
MAX_PER_ADDRESS = 8
#: The longest request head read; a longer one is answered 431.
MAX_HEAD_BYTES = 16 * 1024
#: A refused or cut connection is logged at most this often (with a count).
_LOG_EVERY_S = 30.0

_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TIMEOUT = b"HTTP/1.0 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOO_LONG = b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _head_end(data: bytes | bytearray) -> int:
    """Where the request head in `data` ends (after its blank line), or -1 while it is incomplete."""
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := data.find(mark)) >= 0]
    return min(ends) if ends else -1


class _Throttled:
    """Counts events of one kind and logs them as a warning at most every :data:`_LOG_EVERY_S`."""

    def __init__(self, what: str) -> None:
        self.what, self.count, self.last = what, 0, 0.0
        self.lock = threading.Lock()

    def note(self) -> None:
        with self.lock:
            self.count += 1
            now = time.monotonic()
            if now - self.last < _LOG_EVERY_S:
                return
            count, self.count, self.last = self.count, 0, now
        logger.warning("ops endpoint: %d connection(s) %s", count, self.what)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, but at most ``max_connections`` (``max_per_address`` per client
    address); a connection beyond is answered 503 from the accepting thread and closed."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog: a burst of scrapes is accepted, not dropped and retried

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, max_connections: int,
                 max_per_address: int) -> None:
        self.max_connections, self.max_per_address = max_connections, max_per_address
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._requests: set[socket.socket] = set()
        self._busy = _Throttled("refused: too many at once (503)")
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        host = client_address[0]
        with self._lock:
            full = len(self._requests) >= self.max_connections or self._open[host] >= self.max_per_address
            if not full:
                self._open[host] += 1
                self._requests.add(request)
        if full:
            self._busy.note()
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._release(request, host)
            self.shutdown_request(request)
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection (in its thread), then give its place back."""
        try:
            super().finish_request(request, client_address)
        finally:
            self._release(request, client_address[0])

    def _release(self, request: Any, host: str) -> None:
        with self._lock:
            self._requests.discard(request)
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or timed out is no error of the service: debug, not a traceback on stderr."""
        logger.debug("ops endpoint: a connection from %s ended with an error", client_address[0], exc_info=True)

    def cut_all(self) -> None:
        """End every open connection now (their threads then finish at once)."""
        with self._lock:
            requests = list(self._requests)
        for request in requests:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class OpsServer:
    """Serves the three endpoints in a thread until :meth:`stop`."""

    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes], health: Checks, ready: Checks,
                 head_timeout_s: float = HEAD_TIMEOUT_S, io_timeout_s: float = IO_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS, max_per_address: int = MAX_PER_ADDRESS) -> None:
        routes = {"/metrics": None, "/healthz": health, "/readyz": ready}
        slow = _Throttled("cut: no complete request head in time (408)")

        class Handler(BaseHTTPRequestHandler):
            server_version = "medblip"
            sys_version = ""
            timeout = io_timeout_s  # every read and write of the connection (StreamRequestHandler.setup)

            def handle_one_request(self) -> None:
                """Read the whole head under one deadline, then parse and answer it as http.server does."""
                self.close_connection = True  # one request per connection (HTTP/1.0): no idle keep-alive
                head = self._read_head()
                if head is None:
                    return
                self.rfile.close()  # the socket's reader: the head is all that is read
                self.rfile = io.BytesIO(head)
                super().handle_one_request()

            def _read_head(self) -> bytes | None:
                """The request head, or None (after a 408 or 431 where the client sent part of one)."""
                deadline = time.monotonic() + head_timeout_s
                data = bytearray()
                while (end := _head_end(data)) < 0:
                    if len(data) > MAX_HEAD_BYTES:
                        self._close_with(_TOO_LONG)
                        return None
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        slow.note()
                        if data:
                            self._close_with(_TIMEOUT)
                        return None
                    try:
                        self.connection.settimeout(remaining)
                        chunk = self.connection.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        return None
                    if not chunk:  # the client closed: answer what came, if it is a head at all
                        return bytes(data) + b"\r\n\r\n" if data.strip() else None
                    data += chunk
                if end > MAX_HEAD_BYTES:
                    self._close_with(_TOO_LONG)
                    return None
                self.connection.settimeout(io_timeout_s)
                return bytes(data[:end])

            def _close_with(self, answer: bytes) -> None:
                """Send `answer`, then take (and drop) what the client still sends for a moment, so that
                closing does not reset the connection before the client has read the answer."""
                try:
                    self.connection.settimeout(1.0)
                    self.connection.sendall(answer)
                    self.connection.shutdown(socket.SHUT_WR)
                    until = time.monotonic() + 1.0
                    while time.monotonic() < until and self.connection.recv(65536):
                        pass
                except OSError:
                    pass

            def log_message(self, fmt: str, *args: Any) -> None:  # access logs stay out of the service log
                logger.debug("ops %s " + fmt, self.client_address[0], *args)

            def _answer(self, body: bytes, status: int, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                path = self.path.split("?", 1)[0]
                if path not in routes:
                    self._answer(b'{"error": "not found"}', 404, "application/json")
                    return
                if path == "/metrics":
                    self._answer(metrics(), 200, "text/plain; version=0.0.4; charset=utf-8")
                    return
                checks = routes[path]()  # type: ignore[misc]
                ok = all(v is True for v in checks.values())
                self._answer(json.dumps({"ok": ok, "checks": checks}).encode(), 200 if ok else 503,
                             "application/json")

            do_HEAD = do_GET

            def _refuse(self) -> None:
                self._answer(b'{"error": "method not allowed"}', 405, "application/json")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        self._server = _BoundedServer((host, port), Handler, max_connections=max_connections,
                                      max_per_address=max_per_address)
        self._thread = threading.Thread(target=self._server.serve_forever, name="medblip-ops", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        logger.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", self._server.server_address[0],
                    self.port)

    def stop(self) -> None:
        """Stop accepting, end the open connections and wait for their threads."""
        self._server.shutdown()
        self._server.cut_all()
        self._server.server_close()  # joins the connections' threads, which the cut ended
        self._thread.join(timeout=5)
