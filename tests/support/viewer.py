"""The OHIF viewer for tests: its prebuilt ``dist/`` from npm, served on one origin with Orthanc's DICOMweb.

``.ci/run`` fetches ``@ohif/app`` with ``npm pack`` into ``${XDG_CACHE_HOME:-~/.cache}/medblip-ci/``
and unpacks it there (never into the repository); :func:`ohif_dist` finds it (or the folder named by
``MEDBLIP_OHIF_DIST``). :class:`ViewerServer` serves it at ``/`` on 127.0.0.1 and passes
``/dicom-web/`` through to Orthanc, so the viewer and the archive share one origin (no CORS), as a
site's reverse proxy would. OHIF's build loads its chunks from ``/`` (its public path is fixed at
build time), which is why it is served at the root rather than under Orthanc's ServeFolders plugin,
which can only serve a folder below a prefix. Every path that is not a file of ``dist/`` gets
``index.html``: OHIF routes in the browser (``/viewer?StudyInstanceUIDs=...``).
"""

from __future__ import annotations

import http.client
import http.server
import json
import mimetypes
import os
import threading
import urllib.parse
from pathlib import Path

from tests.support.env import in_ci

#: Where .ci/run keeps the unpacked npm package: <cache>/medblip-ci/ohif-app-<version>/package/dist.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medblip-ci"
_MIME = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
         ".json": "application/json", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
         ".woff2": "font/woff2", ".woff": "font/woff", ".png": "image/png", ".ico": "image/x-icon"}
#: Request headers passed through to Orthanc (Host too: Orthanc writes BulkDataURIs with it).
_PASS_REQUEST = ("accept", "content-type", "host", "range")
_PASS_RESPONSE = ("content-type", "etag", "last-modified", "content-range")


def ohif_dist() -> Path | None:
    """The unpacked OHIF ``dist/`` folder (``MEDBLIP_OHIF_DIST``, else the newest in the CI cache)."""
    named = os.environ.get("MEDBLIP_OHIF_DIST")
    if named:
        return Path(named) if (Path(named) / "index.html").is_file() else None
    found = sorted(CACHE.glob("ohif-app-*/package/dist/index.html"), key=lambda p: _version(p.parents[2].name))
    return found[-1].parent if found else None


def ohif_version(dist: Path) -> str:
    try:
        return str(json.loads((dist.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def require_ohif() -> Path:
    """The OHIF dist, or skip saying how to get it (fail under CI=true, where .ci/run fetches it)."""
    import pytest

    dist = ohif_dist()
    if dist is None:
        message = (f"the OHIF viewer's prebuilt package is not unpacked in {CACHE} (run: mkdir -p {CACHE} && cd "
                   f"{CACHE} && npm pack @ohif/app && mkdir ohif-app-X && tar -xzf ohif-app-X.tgz -C ohif-app-X, "
                   "as .ci/run does; or set MEDBLIP_OHIF_DIST to a dist/ folder)")
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return dist


def _version(name: str) -> tuple[int, ...]:
    digits = name.removeprefix("ohif-app-").split("-")[0].split(".")
    return tuple(int(d) if d.isdigit() else -1 for d in digits)


def app_config() -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source, the page's own origin + ``/dicom-web``
    (Orthanc's DICOMweb plugin), and nothing else enabled."""
    return """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (test PACS)',
      name: 'orthanc',
      wadoUriRoot: window.location.origin + '/wado',
      qidoRoot: window.location.origin + '/dicom-web',
      wadoRoot: window.location.origin + '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      dicomUploadEnabled: false,
      bulkDataURI: { enabled: true },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


class ViewerServer:
    """OHIF's ``dist/`` at ``/`` and Orthanc's DICOMweb at ``/dicom-web/`` on one 127.0.0.1 port.

    HTTP/1.0 (one request per connection), so no handler thread waits on an idle browser
    connection and :meth:`stop` returns at once. Requests are recorded in :attr:`requests`
    (method, path, status) for the test's diagnostics.
    """

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.dist = dist.resolve()
        upstream = urllib.parse.urlsplit(orthanc_url)
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
        self.overlay = {"/app-config.js": app_config().encode()}
        self.requests: list[tuple[str, str, int]] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        viewer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                viewer._handle(self)

            do_HEAD = do_POST = do_GET  # noqa: N815

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="ohif-viewer-server")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # joins the request threads
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(request.path).path
        try:
            if path.startswith("/dicom-web/") or path == "/dicom-web":
                status = self._proxy(request)
            else:
                status = self._static(request, path)
        except (BrokenPipeError, ConnectionResetError):
            status = 499  # the browser went away (a cancelled prefetch)
        self.requests.append((request.command, request.path, status))

    def _static(self, request: http.server.BaseHTTPRequestHandler, path: str) -> int:
        body = self.overlay.get(path)
        name = path
        if body is None:
            target = (self.dist / urllib.parse.unquote(path).lstrip("/")).resolve()
            if not target.is_relative_to(self.dist) or not target.is_file():
                target, name = self.dist / "index.html", "/index.html"  # a route of the single-page app
            body = target.read_bytes()
        suffix = os.path.splitext(name)[1].lower()
        request.send_response(200)
        request.send_header("Content-Type", _MIME.get(suffix) or mimetypes.guess_type(name)[0]
                            or "application/octet-stream")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
        return 200

    def _proxy(self, request: http.server.BaseHTTPRequestHandler) -> int:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASS_REQUEST}
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            upstream.request(request.command, request.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        request.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() in _PASS_RESPONSE:
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)
        return answer.status
