"""Idle and slow clients cannot shut the STOW-RS endpoint.

An outsider with no token opens idle sockets, sends request heads one byte a second, or (with a
token) trickles a body; meanwhile a legitimate sender stores one instance. The sender is answered
200 within 2 s and its instance is in the spool; the server closes the attacker's connections
within its head timeout or body window (plus a margin for a loaded machine); one address alone
cannot hold more than its share of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from tests.support.dicom import reissued
from tests.support.env import free_port, wait_for
from tests.support.services import make_config

from medblip_dicom.integrations.ingest.stow.endpoint import LIMITS
from medblip_dicom.integrations.net.httpserve import ConnectionGuard, RequestLimit, ServeLimits, guarded_config

TOKEN = "the-right-token"
BOUNDARY = "attack-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
#: What a legitimate sender waits at most for its answer while the endpoint is under attack.
ANSWER_WITHIN_S = 2.0
#: Slack on every server-side deadline: the test machine is shared and loaded.
MARGIN_S = 5.0
#: Addresses the attacker spreads over (each holds few enough connections to be admitted).
MANY_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 42)]
#: The head of a STOW-RS request that never ends (no blank line): sent one byte a second.
SLOW_HEAD = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n"
             "X-Padding: " + "p" * 200).encode()


def stow_body(path: Path) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{BOUNDARY}--\r\n".encode())


def authorised_head(length: int) -> bytes:
    """A complete, authorised STOW-RS request head announcing a body of `length` bytes."""
    return (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n").encode()


def stow_once(port: int, body: bytes, source: str) -> tuple[int, float, bytes]:
    """One authorised STOW-RS from `source`: (HTTP status, seconds from connect to the whole answer, body)."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", "/dicom-web/studies", body=body,
                     headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        data = response.read()
        return response.status, time.monotonic() - start, data
    finally:
        conn.close()


@dataclass
class Conn:
    """One attacker socket: what it is, when it opened, what it trickles, when the server closed it."""

    kind: str
    sock: socket.socket
    opened: float
    trickle: bytes = b""
    sent: int = 0
    closed: float | None = None
    received: bytes = b""


@dataclass
class Attack:
    """The attacker's sockets, and a thread that sends each slow one a byte a second and notes when
    the server closes any of them. Use as a context manager: every socket is closed on exit."""

    port: int
    sources: list[str]
    conns: list[Conn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._next_source = itertools.cycle(self.sources)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="stow-attacker", daemon=True)

    def open(self, kind: str, n: int, *, first: bytes = b"", trickle: bytes = b"") -> None:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((next(self._next_source), 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", self.port))
            if first:
                sock.sendall(first)
            sock.setblocking(False)
            with self._lock:
                self.conns.append(Conn(kind, sock, time.monotonic(), trickle))

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for conn in self.conns:
            conn.sock.close()

    def _run(self) -> None:
        next_byte = time.monotonic()
        while not self._stop.wait(0.05):
            with self._lock:
                conns = [c for c in self.conns if c.closed is None]
            now = time.monotonic()
            send = now >= next_byte
            if send:
                next_byte = now + 1.0
            for conn in conns:
                self._watch(conn, now)
                if send and conn.closed is None and conn.trickle:
                    try:
                        conn.sock.send(conn.trickle[conn.sent % len(conn.trickle):][:1])
                        conn.sent += 1
                    except OSError:
                        conn.closed = now

    @staticmethod
    def _watch(conn: Conn, now: float) -> None:
        while True:
            try:
                data = conn.sock.recv(4096)
            except BlockingIOError:
                return
            except OSError:  # reset by the server
                conn.closed = now
                return
            if not data:
                conn.closed = now
                return
            conn.received += data

    def of(self, kind: str) -> list[Conn]:
        with self._lock:
            return [c for c in self.conns if c.kind == kind]

    def open_count(self) -> int:
        with self._lock:
            return sum(c.closed is None for c in self.conns)


def server_connections(service) -> int:
    """Connections the endpoint's uvicorn server holds now (its own count, read from the test)."""
    return len(service.stow._server.server_state.connections)


@pytest.fixture
def endpoint(tmp_path, run_service):
    """A node service with its STOW-RS endpoint and one bearer token; returns (service, port)."""
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    port = free_port()
    config = make_config(tmp_path, node={"port": free_port()}, output={"dir": str(tmp_path / "out")},
                         dicomweb={"port": port, "token_file": str(tmp_path / "tokens")})
    return run_service(config, node=True), port


def test_idle_and_slow_clients_from_many_addresses_do_not_shut_stow_rs(tmp_path, td, endpoint):
    service, port = endpoint
    path = reissued(td, "CT_small.dcm", tmp_path / "in")
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    with Attack(port, MANY_ADDRESSES) as attack:
        attack.open("idle", 64)
        attack.open("slow head", 60, trickle=SLOW_HEAD)
        attack.open("slow body", 10, first=authorised_head(1 << 20), trickle=b"x")
        # Connections that had an answer, then stay silent or send their next head a byte a second.
        answered = b"GET /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        attack.open("kept alive", 1, first=answered)
        attack.open("slow next head", 1, first=answered, trickle=SLOW_HEAD)
        # At least the connections that have not sent a whole head are held before the sender comes.
        wait_for(lambda: server_connections(service) >= 124, 10, "the server to hold the idle and slow connections")

        status, seconds, answer = stow_once(port, stow_body(path), "127.0.0.1")
        assert status == 200, answer
        assert seconds < ANSWER_WITHIN_S, f"the legitimate STOW-RS took {seconds:.2f} s under attack"
        assert uid in {job.sop_instance_uid for job in service.spool.jobs()}

        head_s = LIMITS.header_timeout_s
        body_s = LIMITS.body_window_s + 1.0  # the rate is checked once a second
        wait_for(lambda: attack.open_count() == 0, max(head_s, body_s) + MARGIN_S,
                 "the server to close every idle and slow connection")
        for kind, limit in (("idle", head_s), ("slow head", head_s), ("slow next head", head_s),
                            ("slow body", body_s), ("kept alive", LIMITS.keep_alive_s)):
            late = [c.closed - c.opened for c in attack.of(kind) if c.closed - c.opened > limit + MARGIN_S]
            assert not late, f"{len(late)} {kind} connections were closed only after {max(late):.1f} s"
        # A client whose head was cut short is told why; the kept-alive one had its answer first.
        assert all(c.received.startswith(b"HTTP/1.1 408") for c in attack.of("slow head"))
        kept = attack.of("slow next head")[0].received
        assert kept.startswith(b"HTTP/1.1 405") and b"HTTP/1.1 408" in kept
        assert attack.of("kept alive")[0].received.startswith(b"HTTP/1.1 405")


def test_one_address_gets_its_share_of_connections_and_others_are_served(tmp_path, td, endpoint):
    service, port = endpoint
    path = reissued(td, "CT_small.dcm", tmp_path / "in")
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    with Attack(port, ["127.0.0.1"]) as attack:
        attack.open("idle", 64)
        attack.open("slow head", 70, trickle=SLOW_HEAD)
        share = LIMITS.max_per_address
        # The extra sockets are refused at once: long before any head timeout.
        wait_for(lambda: attack.open_count() <= share, LIMITS.header_timeout_s / 2,
                 f"the server to refuse all but {share} connections from one address")
        status, seconds, answer = stow_once(port, stow_body(path), "127.0.0.2")
        assert status == 200, answer
        assert seconds < ANSWER_WITHIN_S, f"the legitimate STOW-RS took {seconds:.2f} s under attack"
        assert uid in {job.sop_instance_uid for job in service.spool.jobs()}
        assert attack.open_count() == share


def test_a_forwarded_for_header_does_not_change_the_address_in_the_audit_trail(tmp_path, endpoint):
    service, port = endpoint
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/dicom-web/studies", body=b"x",
                     headers={"Content-Type": CONTENT_TYPE, "X-Forwarded-For": "203.0.113.9"})
        assert conn.getresponse().status == 401
    finally:
        conn.close()
    audit = tmp_path / "spool" / "audit.xml"
    wait_for(lambda: audit.exists() and "bearer token" in audit.read_text(), 10, "the security alert")
    text = audit.read_text()
    assert "127.0.0.1" in text and "203.0.113.9" not in text


def test_requests_beyond_the_cap_are_answered_503_and_the_cap_counts_requests():
    guard = ConnectionGuard(ServeLimits(max_requests=2))
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = RequestLimit(app, guard)

    async def call() -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        await limited({"type": "http"}, receive, send)
        return sent

    async def scenario() -> tuple[list[dict], list[list[dict]], int]:
        served = [asyncio.create_task(call()) for _ in range(2)]
        await asyncio.sleep(0)
        refused = await asyncio.wait_for(call(), 5)  # a third while two are served: at once, 503
        release.set()
        done = await asyncio.wait_for(asyncio.gather(*served), 5)
        return refused, done, guard.active_requests

    refused, done, active = asyncio.run(scenario())
    assert refused[0]["status"] == 503
    assert (b"retry-after", b"1") in refused[0]["headers"]
    assert [d[0]["status"] for d in done] == [200, 200]
    assert active == 0


@contextlib.contextmanager
def served(app, limits) -> Iterator[tuple[int, Any]]:
    """Serve `app` with `limits` (httpserve) on a free port in a thread: (port, its guard); stopped on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config, guard = guarded_config(app, limits=limits, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="guarded-server", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "the guarded server to start")
        yield int(sock.getsockname()[1]), guard
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def test_when_every_place_is_taken_by_silent_clients_the_oldest_makes_room():
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = ServeLimits(max_connections=4, max_per_address=4)
    with served(app, limits) as (port, guard), Attack(port, MANY_ADDRESSES) as attack:
        for _ in range(4):  # one at a time, so that the first is the oldest
            attack.open("idle", 1)
            wait_for(lambda n=len(attack.conns): len(guard.admitted) == n, 5, "the server to take the connection")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
        finally:
            conn.close()
        wait_for(lambda: attack.of("idle")[0].closed is not None, 5, "the oldest silent connection to be closed")
        assert all(c.closed is None for c in attack.of("idle")[1:])


def test_uvicorn_private_classes_are_used_in_httpserve_only():
    root = Path(__file__).resolve().parents[2]
    users = sorted(str(p.relative_to(root)) for folder in ("medblip_dicom", "integrations", "training")
                   for p in (root / folder).rglob("*.py") if "h11_impl" in p.read_text())
    assert users == ["integrations/net/httpserve.py"], users


def test_uvicorn_still_has_what_the_guard_relies_on():
    import uvicorn

    from medblip_dicom.integrations.net import httpserve

    httpserve.check.cache_clear()
    httpserve.check()  # raises, naming each missing hook, on a release that moved them
    assert uvicorn.__version__.startswith(httpserve.TESTED_SERIES + ".")


def test_a_uvicorn_without_a_hook_is_named(monkeypatch):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from medblip_dicom.errors import MissingDependencyError
    from medblip_dicom.integrations.net import httpserve

    monkeypatch.delattr(H11Protocol, "on_response_complete")
    httpserve.check.cache_clear()
    try:
        with pytest.raises(MissingDependencyError, match="H11Protocol.on_response_complete"):
            httpserve.check()
    finally:
        httpserve.check.cache_clear()
