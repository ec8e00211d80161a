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
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

Checks = Callable[[], dict[str, Any]]


class OpsServer:
    """Serves the three endpoints in a thread until :meth:`stop`."""

    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes], health: Checks, ready: Checks) -> None:
        routes = {"/metrics": None, "/healthz": health, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            server_version = "medblip"
            sys_version = ""

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

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="medblip-ops", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        logger.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", self._server.server_address[0],
                    self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
