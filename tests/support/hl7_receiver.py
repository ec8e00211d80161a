"""An MLLP receiver for the HL7 sink's tests, built on hl7apy (the sink builds with python-hl7).

Every complete message is parsed **strictly** as an ORU^R01 of HL7 v2.5.1: MSH-9 ``ORU^R01^ORU_R01``,
MSH-12 ``2.5.1``, MSH-18 ``UNICODE UTF-8``, MSH-10 at most 20 characters, then hl7apy's parser at
``VALIDATION_LEVEL.STRICT`` with the v2.5.1 message structure and its ``validate()``. A message that
fails is recorded in ``invalid`` and answered AR. Otherwise ``answer(n, message)`` decides: ``"AA"``,
``"AE"``, ``"AR"`` (answered with an hl7apy-built ACK), ``None`` (no answer: the connection is held
open until the sender gives up). ``die_after`` bytes makes the receiver close the connection and stop
listening once it has read that many bytes of a message: a receiver that dies mid-message.

It listens on 127.0.0.1 (port 0 unless given), in a thread; :meth:`stop` closes everything.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

START, END = b"\x0b", b"\x1c\x0d"
_ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}


def unescape(value: str) -> str:
    """An HL7 value's text: the delimiter escapes, ``\\Xhh..\\`` (UTF-8 bytes) and ``\\.br\\`` decoded."""
    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in _ESCAPES:
            return _ESCAPES[body]
        if body.startswith("X"):
            return bytes.fromhex(body[1:]).decode("utf-8")
        if body == ".br":
            return "\n"
        raise ValueError(f"unknown escape \\{body}\\")

    return re.sub(r"\\([^\\]*)\\", one, value)


@dataclass
class Received:
    """One message the receiver parsed and accepted as an ORU^R01 v2.5.1."""

    raw: str
    message: Any = field(repr=False)
    control_id: str = ""
    result_status: str = ""
    text: str = ""
    report_uid: str = ""
    ai_report_uid: str = ""
    answer: str | None = None

    def field(self, path: str) -> str:
        """An element's ER7 text, e.g. ``pid.pid_5``, read from the first segment of that name."""
        seg, _, name = path.partition(".")
        for segment in _segments(self.message):
            if segment.name.lower() == seg:
                return getattr(segment, name).to_er7()
        return ""


def _segments(element: Any) -> list[Any]:
    out = []
    for child in element.children:
        if child.classname == "Segment":
            out.append(child)
        elif child.classname == "Group":
            out += _segments(child)
    return out


def strict_parse(text: str) -> Received:
    """`text` as an ORU^R01 v2.5.1 (see the module docstring); raises ValueError naming the fault."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    fields = text.split("\r", 1)[0].split("|")
    if len(fields) < 18 or fields[8] != "ORU^R01^ORU_R01" or fields[11] != "2.5.1" or fields[17] != "UNICODE UTF-8":
        raise ValueError(f"MSH is not ORU^R01^ORU_R01 v2.5.1 in UTF-8: {text.split(chr(13), 1)[0][:120]!r}")
    if not 0 < len(fields[9]) <= 20:
        raise ValueError(f"MSH-10 {fields[9]!r} is not 1 to 20 characters")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()  # raises hl7apy's ValidationError
    received = Received(raw=text, message=message, control_id=fields[9])
    obr = [s for s in _segments(message) if s.name == "OBR"]
    received.result_status = obr[0].obr_25.to_er7()
    for obx in (s for s in _segments(message) if s.name == "OBX"):
        code = obx.obx_3.to_er7().split("^")[0]
        value = unescape(obx.obx_5.to_er7())
        if code == "18748-4":
            received.text = value
        elif code == "REPORT-UID":
            received.report_uid = value
        elif code == "AI-REPORT-UID":
            received.ai_report_uid = value
    return received


def ack(control_id: str, code: str, text: str = "") -> str:
    """An ACK built with hl7apy."""
    from hl7apy.core import Message

    message = Message("ACK", version="2.5.1")
    message.msh.msh_3 = "TESTRIS"
    message.msh.msh_9 = "ACK^R01^ACK"
    message.msh.msh_10 = f"ACK{control_id}"[:20]
    message.msh.msh_11 = "P"
    message.msa.msa_1 = code
    message.msa.msa_2 = control_id
    if text:
        message.msa.msa_3 = text
    return message.to_er7()


class Hl7Receiver:
    """The receiver (see the module docstring); a context manager."""

    def __init__(self, answer: Callable[[int, Received], str | None] | None = None, *, port: int = 0,
                 die_after: int | None = None) -> None:
        self.answer = answer or (lambda n, message: "AA")
        self.die_after = die_after
        self.received: list[Received] = []
        self.invalid: list[str] = []
        self.died = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Hl7Receiver:
        thread = threading.Thread(target=self._accept, name="hl7-receiver", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def accepted(self, status: str | None = None) -> list[Received]:
        """The messages answered AA (with `status` in OBR-25 when given)."""
        with self._lock:
            return [m for m in self.received if m.answer == "AA" and status in (None, m.result_status)]

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="hl7-connection", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        conn.settimeout(0.1)
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                if self.die_after is not None and len(buffer) >= self.die_after:
                    self.died.set()
                    self._stop.set()
                    conn.close()
                    self._listener.close()
                    return
                while END in buffer:
                    framed, _, buffer = buffer.partition(END)
                    reply = self._handle(framed[framed.find(START) + 1:].decode("utf-8"))
                    if reply is not None:
                        conn.sendall(START + reply.encode("utf-8") + END)

    def _handle(self, text: str) -> str | None:
        try:
            received = strict_parse(text)
        except Exception as exc:  # noqa: BLE001 - any fault of the message is the test's finding
            with self._lock:
                self.invalid.append(f"{type(exc).__name__}: {exc}")
            control = text.split("\r", 1)[0].split("|")[9:10] or [""]
            return ack(control[0], "AR", "not a valid ORU^R01 v2.5.1")
        with self._lock:
            n = len(self.received) + 1
        received.answer = self.answer(n, received)
        with self._lock:
            self.received.append(received)
        if received.answer is None:
            return None
        return ack(received.control_id, received.answer, "" if received.answer == "AA" else "test receiver says no")
