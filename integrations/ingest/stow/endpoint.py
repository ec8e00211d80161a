"""The STOW-RS endpoint of the node service: ``POST /dicom-web/studies[/{StudyInstanceUID}]``.

A Starlette app (the web stack of the review station) served by uvicorn in a thread of the
service, on ``[dicomweb] host:port`` (127.0.0.1 unless told otherwise), with TLS when a
certificate is set (then plain HTTP is not answered at all). The server keeps idle and slow
clients from taking a sender's place (:mod:`..httpserve`, figures in :data:`LIMITS`): a request
head must come within 10 s, a body at 1 KiB/s or more, one address holds at most 8 connections,
and at most 64 requests (not sockets) are served at once, 503 with ``Retry-After`` beyond.
In order, a request is refused:

- 401 without ``Authorization: Bearer <token>`` of one of the configured tokens (when any is);
  this and every other answer given before the body was read closes the connection, so that an
  unread body is never waited for;
- 415 unless it is ``multipart/related; type="application/dicom"``;
- 413 when its Content-Length, or the bytes read so far, pass ``[dicomweb] max_body_bytes``:
  the body is parsed as it streams in (:mod:`.multipart`), never read whole into memory;
- 400 when the body is malformed: no valid boundary, the boundary never appears, truncated
  before its closing boundary, broken part headers.

Nothing of a refused request is stored. A complete body's parts are then stored one by one
(:mod:`.receiver`): 200, 202 or 409 with an ``application/dicom+json`` body that lists only the
instances the spool holds durably. Error answers carry ``{"error": reason}``.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from medblip_dicom.uids import is_dicom_uid

from medblip_dicom.integrations.config.checks import ConfigError
from medblip_dicom.integrations.config.dicomweb import DicomwebConfig
from medblip_dicom.integrations.ingest.stow.multipart import (
    BodyTooLarge, MultipartError, MultipartParser, UnsupportedMediaType, stow_boundary,
)
from medblip_dicom.integrations.ingest.stow.receiver import StowReceiver
from medblip_dicom.integrations.net.httpserve import ConnectionGuard, ServeLimits, guarded_config

logger = logging.getLogger(__name__)

#: What a STOW-RS client may hold: a whole request head within 10 s, a body at 1 KiB/s or more over
#: 10 s, 8 connections per client address, 512 connections in all, 64 requests served at once (503
#: with Retry-After beyond; a sender retries), 5 s for an idle kept-alive connection.
LIMITS = ServeLimits()


def build_app(receiver: StowReceiver, *, tokens: frozenset[str], max_body_bytes: int,
              on_security_alert: Callable[[str, str], None] | None = None) -> Any:
    """The Starlette app: the two STOW-RS routes; anything else is 404 (405 for another method)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, reason: str, **headers: str) -> Response:
        return JSONResponse({"error": reason}, status_code=status, headers=headers or None)

    def refuse_unread(status: int, reason: str, **headers: str) -> Response:
        """An answer given before the body was read: the connection closes (the body is not waited for)."""
        return error(status, reason, Connection="close", **headers)

    def authorised(request: Request) -> bool:
        if not tokens:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return False
        given_bytes = given.strip().encode()
        # Compare against every token (no early exit), so timing does not tell which one is near.
        return sum(hmac.compare_digest(given_bytes, t.encode()) for t in tokens) > 0

    async def stow(request: Request) -> Response:
        peer = request.client.host if request.client else "?"
        if not authorised(request):
            logger.warning("STOW-RS from %s refused: no valid bearer token", peer)
            if on_security_alert is not None:
                on_security_alert(peer, "STOW-RS request without a valid bearer token")
            return refuse_unread(401, "a valid bearer token is required",
                                 **{"WWW-Authenticate": 'Bearer realm="dicom-web"'})
        study_uid = request.path_params.get("study")
        if study_uid is not None and not is_dicom_uid(study_uid):
            return refuse_unread(400, "the StudyInstanceUID in the URL is not a UID")
        try:
            boundary = stow_boundary(request.headers.get("content-type"))
        except UnsupportedMediaType as exc:
            return refuse_unread(415, str(exc))
        except MultipartError as exc:
            return refuse_unread(400, str(exc))
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return refuse_unread(413, f"the body is longer than the limit of {max_body_bytes} bytes")
        parser = MultipartParser(boundary, max_body_bytes=max_body_bytes)
        try:
            async for chunk in request.stream():
                parser.feed(chunk)
            parts = parser.close()
        except BodyTooLarge as exc:
            parser.discard()
            return error(413, str(exc), Connection="close")
        except MultipartError as exc:
            parser.discard()
            logger.warning("STOW-RS from %s refused: malformed multipart body (%s)", peer, exc)
            return refuse_unread(400, f"malformed multipart body: {exc}")
        except ClientDisconnect:  # the client went away, or was cut for sending too slowly
            parser.discard()
            logger.info("STOW-RS from %s: the connection closed before the whole body came; nothing stored", peer)
            return Response(status_code=400)  # nobody reads it: the connection is gone
        except Exception:
            parser.discard()  # whatever failed, nothing of this request is stored
            raise
        result = await run_in_threadpool(receiver.store, parts, study_uid, peer=peer)
        logger.info("STOW-RS from %s: %d stored, %d refused -> HTTP %d", peer, len(result.stored),
                    len(result.failed), result.http_status)
        return JSONResponse(result.dicom_json(), status_code=result.http_status, media_type="application/dicom+json")

    routes = [Route("/dicom-web/studies", stow, methods=["POST"]),
              Route("/dicom-web/studies/{study}", stow, methods=["POST"])]
    return Starlette(routes=routes)


class StowEndpoint:
    """The endpoint as a server: :meth:`start` binds and serves in a thread, :meth:`stop` ends it."""

    def __init__(self, receiver: StowReceiver, config: DicomwebConfig,
                 on_security_alert: Callable[[str, str], None] | None = None) -> None:
        self.receiver = receiver
        self.config = config
        self.tokens = config.tokens()  # read now: a missing token file stops the start with its name
        self.app = build_app(receiver, tokens=self.tokens, max_body_bytes=config.max_body_bytes,
                             on_security_alert=on_security_alert)
        self._server: Any = None
        #: The connections of the running server (counts of what it refused or cut), once started.
        self.guard: ConnectionGuard | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the STOW-RS endpoint is not listening")
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        """Bind (errors such as a port in use are raised here) and serve in a background thread."""
        import uvicorn

        cfg = self.config
        if cfg.tls.enabled:  # a certificate that does not load is named here, not in uvicorn's thread
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cfg.tls.cert), str(cfg.tls.key))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"[dicomweb.tls] cert/key: cannot load {cfg.tls.cert} with {cfg.tls.key} "
                                  f"({exc})") from None
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        tls = {"ssl_certfile": str(cfg.tls.cert), "ssl_keyfile": str(cfg.tls.key)} if cfg.tls.enabled else {}
        # proxy_headers off: the peer in logs and in the audit trail is the socket's, never an
        # X-Forwarded-For that any local client could send (uvicorn believes it from 127.0.0.1).
        config, self.guard = guarded_config(self.app, limits=LIMITS, log_level="warning", access_log=False,
                                            lifespan="off", timeout_graceful_shutdown=5, server_header=False,
                                            proxy_headers=False, **tls)
        self._server = uvicorn.Server(config)
        started = threading.Event()
        server = self._server

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                started.set()

        self._thread = threading.Thread(target=serve, name="medblip-dicomweb", daemon=True)
        self._thread.start()
        while not server.started and not started.wait(0.02):
            pass
        if not server.started:
            raise RuntimeError("the STOW-RS endpoint did not start (see the log)")
        logger.info("STOW-RS endpoint listening on %s://%s:%d/dicom-web/studies (%s)", "https" if cfg.tls.enabled else "http",
                    cfg.host, self.port, "bearer tokens" if self.tokens else "no token: loopback only")

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; requests in progress get `grace_s` to finish."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=grace_s + 5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        counts = self.guard.counts if self.guard is not None else {}
        logger.info("STOW-RS endpoint stopped (%d stored, %d refused; connections refused for their address %d, "
                    "heads timed out %d, slow bodies cut %d, answered busy %d)", self.receiver.stored,
                    self.receiver.refused, counts.get("address_limit", 0), counts.get("head_timeout", 0),
                    counts.get("slow_body", 0), counts.get("busy", 0))
