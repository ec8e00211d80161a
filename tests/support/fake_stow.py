"""A scripted STOW-RS server for the answers a real archive rarely gives (4xx, 202, 503 + Retry-After).

Each request is recorded (time, path, headers, the SOPInstanceUIDs of its parts); the answer is the
next entry of the script, a function of the request's UIDs, so a test says what the archive does.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom


@dataclass
class Request:
    at: float
    path: str
    headers: dict[str, str]
    uids: list[str]


@dataclass
class Answer:
    status: int
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)


def stow_body(stored: list[str], failed: dict[str, int]) -> dict:
    """A DICOM JSON STOW-RS response: ReferencedSOPSequence and FailedSOPSequence (with FailureReason)."""
    body: dict = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [u]}} for u in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [u]},
                                                   "00081197": {"vr": "US", "Value": [r]}} for u, r in failed.items()]}
    return body


def _parts(body: bytes, content_type: str) -> list[str]:
    boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip('"')
    uids = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        payload = chunk.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
        uids.append(str(pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True).SOPInstanceUID))
    return uids


@contextmanager
def fake_stow(script: Callable[[int, list[str]], Answer]) -> Iterator[tuple[str, list[Request]]]:
    """Serve STOW-RS at ``http://127.0.0.1:PORT/dicom-web``; yields the URL and the request log."""
    received: list[Request] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    data += self.rfile.read(size)
                    self.rfile.readline()
            else:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(_parts(data, self.headers["Content-Type"]))

        def do_GET(self) -> None:  # noqa: N802 - a QIDO-RS probe: the script answers it too (no UIDs)
            self._answer([])

        def _answer(self, uids: list[str]) -> None:
            request = Request(time.monotonic(), self.path, dict(self.headers.items()), uids)
            received.append(request)
            answer = script(len(received), request.uids)
            payload = json.dumps(answer.body).encode() if answer.body is not None else b""
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-stow", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
