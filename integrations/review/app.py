"""The review station's web app (FastAPI): pages (:mod:`.routes.pages`) and the JSON API (:mod:`.routes.api`).

:func:`create_app` makes one :class:`~.deps.Station` (store, accounts, sessions, templates,
settings) that every route receives as a typed dependency (:mod:`.deps`); :func:`serve` runs the
app under uvicorn, bound to 127.0.0.1 unless told otherwise, with TLS when a certificate and key
are given. Every response carries headers that keep it out of frames and caches and allow scripts
and styles from the app itself only. An error is answered as JSON (``{"detail": ...}``) under
``/api/`` and as one line of text elsewhere; a page without a session redirects to ``/login``.

The client address that logins are throttled by is the socket's peer: uvicorn's proxy headers
are off, so no ``X-Forwarded-For`` is believed (by default uvicorn believes it from 127.0.0.1,
which would let a local client pick any address per request).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from medblip_dicom.integrations.review.accounts import MAX_CONCURRENT_HASHES, Accounts
from medblip_dicom.integrations.review.deps import LoginRequired, Station, attach
from medblip_dicom.integrations.review.security import Sessions
from medblip_dicom.integrations.review.store import ReviewStore

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
}


def create_app(store: ReviewStore, *, organization: str = "", secure_cookies: bool = False,
               session_idle_s: float = 1800.0, max_login_failures: int = 5,
               max_concurrent_hashes: int = MAX_CONCURRENT_HASHES) -> FastAPI:
    """The app for one spool's review store (cookies Secure when `secure_cookies`, i.e. under TLS;
    at most `max_concurrent_hashes` password hashes at once)."""
    from medblip_dicom.integrations.review.routes import api, pages

    accounts = Accounts(store.db, max_failures=max_login_failures, max_concurrent_hashes=max_concurrent_hashes)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)  # captions as text
    app = FastAPI(title="medblip review station", docs_url=None, redoc_url=None, openapi_url=None)
    attach(app, Station(store, accounts, Sessions(store.db, idle_s=session_idle_s), Jinja2Templates(env=env),
                        organization, secure_cookies))

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors()[:3])
        message = f"invalid request: {fields}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=422)
        return PlainTextResponse(message, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=headers)

    app.include_router(pages.router)
    app.include_router(api.router)
    return app


def serve(app: FastAPI, *, host: str, port: int, cert: Path | None = None, key: Path | None = None) -> None:
    """Run `app` under uvicorn until SIGINT / SIGTERM, which stop it cleanly (the call returns)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # uvicorn re-raises the signal afterwards; a stop is no error
            previous = {sig: signal.signal(sig, lambda *_: setattr(self, "should_exit", True))
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    from medblip_dicom.integrations.net.httpserve import BROWSER_LIMITS, guarded_config

    # Idle and slow clients are timed out and one address holds a bounded share (httpserve).
    config, _ = guarded_config(app, limits=BROWSER_LIMITS, host=host, port=port,
                               ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None,
                               log_level="warning", access_log=False, proxy_headers=False)
    logger.info("review station on %s://%s:%d", "https" if cert else "http", host, port)
    server = Server(config)
    server.run()
    if not server.started:
        raise OSError(f"the server did not start on {host}:{port} (see the log above)")
