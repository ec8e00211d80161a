"""An MLLP client: HL7 v2 messages over TCP (optionally TLS), one connection per group of messages.

MLLP (HL7 v2.5.1, Appendix C) frames each message as ``<VT> message <FS><CR>`` (0x0B ... 0x1C 0x0D);
the receiver answers each with a framed ACK on the same connection. :class:`MllpConnection` sends
one message and waits for its ACK, at most ``timeout_s``; it never sends the next one before the
previous one was answered.

Failures are :class:`MllpError` (no connection, TLS failed, the connection closed or reset, no
answer in time, an answer that is not one MLLP frame): the sink treats them as "not reached now" and
delivery sends the message again later. A message the receiver got but could not answer before the
connection broke is therefore sent twice; its MSH-10 is the same both times.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from medblip_dicom.errors import MedblipError

START, END = b"\x0b", b"\x1c\x0d"
#: An ACK larger than this is not an ACK (a receiver that echoes the message is still fine).
MAX_ANSWER = 1 << 20


class MllpError(MedblipError):
    """The MLLP exchange failed: no connection, no answer in time, a broken connection or frame."""


def frame(message: str) -> bytes:
    """The MLLP frame of `message` (UTF-8: MSH-18 says so)."""
    return START + message.encode("utf-8") + END


class MllpConnection:
    """One connection to an MLLP receiver; use as a context manager."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._buffer = b""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __enter__(self) -> MllpConnection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise MllpError(f"HL7 receiver {self.address} cannot be reached ({exc.strerror or exc})") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise MllpError(f"HL7 receiver {self.address}: TLS failed ({exc})") from None
        self._sock = sock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def exchange(self, message: str) -> str:
        """Send `message`, return the receiver's answer (the text inside its frame)."""
        assert self._sock is not None, "use the connection as a context manager"
        try:
            self._sock.sendall(frame(message))
        except OSError as exc:
            raise MllpError(f"HL7 receiver {self.address} closed the connection while we sent ({exc})") from None
        return self._answer()

    def _answer(self) -> str:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout_s
        while END not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MllpError(f"HL7 receiver {self.address} sent no ACK within {self.timeout_s:g} s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise MllpError(f"HL7 receiver {self.address} broke the connection ({exc})") from None
            if not chunk:
                raise MllpError(f"HL7 receiver {self.address} closed the connection without an ACK")
            self._buffer += chunk
            if len(self._buffer) > MAX_ANSWER:
                raise MllpError(f"HL7 receiver {self.address} sent more than {MAX_ANSWER} bytes without ending a frame")
        answer, _, self._buffer = self._buffer.partition(END)
        start = answer.find(START)
        if start < 0:
            raise MllpError(f"HL7 receiver {self.address} answered without an MLLP start block")
        try:
            return answer[start + 1:].decode("utf-8")
        except UnicodeDecodeError:
            return answer[start + 1:].decode("latin-1")
