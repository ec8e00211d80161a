"""The operations endpoint under idle and slow clients: each is cut in time, the threads are bounded,
and a client that sends nothing never keeps the scrape from its answer."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from medblip_dicom.integrations.ops.http import OpsServer
from tests.support.env import wait_for
from tests.support.fixtures import no_leaked_threads  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_leaked_threads")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def serve() -> Iterator:
    """Start an OpsServer on a free loopback port with the given limits; all are stopped after the test."""
    started: list[OpsServer] = []

    def start(**limits) -> OpsServer:
        server = OpsServer("127.0.0.1", 0, metrics=lambda: b"medblip_up 1\n", health=lambda: {"alive": True},
                           ready=lambda: {"model": True}, **limits)
        server.start()
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


def healthz(port: int) -> int:
    with _opener.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        return response.status


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A client connection from `source` (any 127/8 address is this machine)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds the wait)."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_client_that_sends_nothing_is_closed_after_the_head_timeout(serve):
    server = serve(head_timeout_s=0.5)
    with connect(server.port) as idle:
        started = time.monotonic()
        assert read_until_closed(idle) == b""  # closed without an answer: it asked nothing
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 20, elapsed
    assert healthz(server.port) == 200


def test_a_client_that_sends_its_head_a_byte_at_a_time_is_answered_408_and_closed(serve):
    server = serve(head_timeout_s=0.6)
    request = b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n"
    with connect(server.port) as slow:
        started = time.monotonic()
        try:
            for byte in request:  # 0.1 s a byte: the whole head would take 3.4 s
                slow.send(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut while still sending
        answer = read_until_closed(slow)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.0 408"), answer
    assert elapsed < len(request) * 0.1 + 20


def test_a_request_head_beyond_the_limit_is_answered_431(serve):
    server = serve()
    with connect(server.port) as client:
        client.sendall(b"GET /healthz HTTP/1.0\r\n" + b"X-Filler: " + b"a" * 20_000 + b"\r\n\r\n")
        assert read_until_closed(client).startswith(b"HTTP/1.0 431")


def test_the_threads_are_bounded_and_a_connection_beyond_is_answered_503_at_once(serve):
    server = serve(head_timeout_s=30, max_connections=3, max_per_address=3)
    before = threading.active_count()
    idle = [connect(server.port) for _ in range(3)]
    try:
        wait_for(lambda: threading.active_count() == before + 3, 10, "a thread for each idle connection")
        extra = [connect(server.port) for _ in range(5)]
        for sock in extra:
            started = time.monotonic()
            assert read_until_closed(sock).startswith(b"HTTP/1.0 503")
            assert time.monotonic() - started < 5  # answered by the accepting thread, not after a timeout
            sock.close()
        assert threading.active_count() == before + 3  # no thread for the refused ones
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: _answers(server.port), 10, "a place again once the idle clients left")


def _answers(port: int) -> bool:
    try:
        return healthz(port) == 200
    except OSError:  # 503 (an HTTPError) while the server has not yet seen the idle clients leave
        return False


def test_idle_sockets_from_one_address_do_not_keep_others_from_their_answer(serve):
    server = serve(head_timeout_s=30, max_per_address=2, max_connections=8)
    hogs = [connect(server.port, source="127.0.0.2") for _ in range(6)]
    try:
        assert sum(read_until_closed(s).startswith(b"HTTP/1.0 503") for s in hogs[2:]) == 4
        for _ in range(3):
            assert healthz(server.port) == 200  # 127.0.0.1 is served while 127.0.0.2 holds its two places
    finally:
        for sock in hogs:
            sock.close()


def test_stop_ends_open_connections_at_once(serve):
    server = serve(head_timeout_s=60, io_timeout_s=60)
    idle = [connect(server.port) for _ in range(3)]
    try:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 10
        for sock in idle:
            try:
                assert read_until_closed(sock) == b""
            except ConnectionResetError:
                pass  # closed, by a reset
    finally:
        for sock in idle:
            sock.close()
