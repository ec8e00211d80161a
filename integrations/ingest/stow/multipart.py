"""A streaming ``multipart/related`` parser (RFC 2387 / RFC 2046) with a body limit.

The STOW-RS endpoint feeds it the request body chunk by chunk as it arrives; it never holds more
than one chunk plus a boundary's length of unparsed bytes, and each part's body goes into a
:class:`~tempfile.SpooledTemporaryFile` (memory up to ``spill_bytes``, then a temporary file),
so memory stays bounded whatever the client sends. :class:`BodyTooLarge` is raised as soon as
the bytes fed pass ``max_body_bytes``, so the endpoint can stop reading there.

Only a body that ends with its closing delimiter (``--BOUNDARY--``) is complete: :meth:`close`
raises :class:`MultipartError` for a truncated body, a body without the boundary (a wrong
boundary), oversized part headers or too many parts. The caller stores nothing until then.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from typing import IO

#: Part headers longer than this are refused (they are a few lines in STOW-RS).
MAX_HEADER_BYTES = 16 * 1024
#: Transport padding (spaces, tabs) after a delimiter longer than this is refused.
MAX_PADDING_BYTES = 1024
#: Parts per request.
MAX_PARTS = 10_000


class MultipartError(ValueError):
    """The body is not a well-formed multipart body for its boundary."""


class BodyTooLarge(MultipartError):
    """The body is longer than the limit."""


class UnsupportedMediaType(ValueError):
    """The request's Content-Type is not ``multipart/related; type="application/dicom"``."""


_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``(media type, parameters)`` of a Content-Type value; names lower-cased, quotes removed."""
    media, _, rest = value.partition(";")
    params = {}
    for name, raw in _PARAM.findall(";" + rest):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    return media.strip().lower(), params


def stow_boundary(content_type: str | None, accepted: tuple[str, ...] = ("application/dicom",)) -> bytes:
    """The boundary of a STOW-RS request's Content-Type.

    Raises :class:`UnsupportedMediaType` unless it is ``multipart/related`` with a ``type`` in
    `accepted`, and :class:`MultipartError` when the boundary is missing or not a valid one.
    """
    media, params = parse_content_type(content_type or "")
    if media != "multipart/related":
        raise UnsupportedMediaType(f"Content-Type {media or '(none)'!s} is not multipart/related")
    kind = params.get("type", "").lower()
    if kind not in accepted:
        raise UnsupportedMediaType(f"multipart/related of type {kind or '(none)'!s}; this endpoint takes "
                                   + " or ".join(accepted))
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or not re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]",
                                                         boundary):
        raise MultipartError("the Content-Type has no valid boundary parameter")
    return boundary.encode("ascii")


@dataclass
class Part:
    """One body part: its headers (names lower-cased) and its content."""

    headers: dict[str, str]
    body: IO[bytes]
    size: int = 0
    media_type: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.media_type = parse_content_type(self.headers.get("content-type", ""))[0]

    def read(self) -> bytes:
        self.body.seek(0)
        return self.body.read()

    def close(self) -> None:
        self.body.close()


class MultipartParser:
    """Feed bytes with :meth:`feed`; :meth:`close` returns the parts of a complete body."""

    _PREAMBLE, _HEADERS, _BODY, _AFTER_DELIMITER, _DONE = range(5)

    def __init__(self, boundary: bytes, *, max_body_bytes: int, spill_bytes: int = 8 << 20) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.max_body_bytes = max_body_bytes
        self.spill_bytes = spill_bytes
        self.parts: list[Part] = []
        self.received = 0
        self._state = self._PREAMBLE
        self._buf = bytearray(b"\r\n")  # so that a delimiter at the very start is found like the others
        self._current: Part | None = None

    def feed(self, chunk: bytes) -> None:
        """Parse `chunk`; raises :class:`BodyTooLarge` past the limit, :class:`MultipartError` on bad syntax."""
        self.received += len(chunk)
        if self.received > self.max_body_bytes:
            raise BodyTooLarge(f"the body is longer than the limit of {self.max_body_bytes} bytes")
        if self._state == self._DONE:
            return  # the epilogue is ignored
        self._buf += chunk
        self._parse()

    def _parse(self) -> None:
        while True:
            if self._state in (self._PREAMBLE, self._BODY):
                at = self._buf.find(self.delimiter)
                if at < 0:
                    keep = len(self.delimiter) - 1
                    if self._state == self._BODY and len(self._buf) > keep:
                        self._write(self._buf[:-keep])
                        del self._buf[:-keep]
                    elif self._state == self._PREAMBLE and len(self._buf) > keep:
                        del self._buf[:-keep]
                    return
                if self._state == self._BODY:
                    self._write(self._buf[:at])
                    self._finish_part()
                del self._buf[:at + len(self.delimiter)]
                self._state = self._AFTER_DELIMITER
            elif self._state == self._AFTER_DELIMITER:
                if len(self._buf) < 2:
                    return
                if self._buf[:2] == b"--":
                    self._state = self._DONE
                    self._buf.clear()
                    return
                # The limits hold whatever the chunking: the search stops where they end.
                end = self._buf.find(b"\r\n", 0, MAX_PADDING_BYTES + 2)
                if end < 0:
                    if len(self._buf) > MAX_PADDING_BYTES + 1:
                        raise MultipartError("a boundary line is not followed by CRLF")
                    return
                if self._buf[:end].strip(b" \t"):  # only transport padding may follow a delimiter
                    raise MultipartError("a boundary line is followed by other text (a boundary inside a part?)")
                del self._buf[:end + 2]
                self._state = self._HEADERS
            elif self._state == self._HEADERS:
                end = self._buf.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
                blank_first = self._buf[:2] == b"\r\n"
                if not blank_first and end < 0:
                    if len(self._buf) > MAX_HEADER_BYTES + 3:
                        raise MultipartError(f"part headers longer than {MAX_HEADER_BYTES} bytes")
                    return
                raw = b"" if blank_first else bytes(self._buf[:end])
                del self._buf[:2 if blank_first else end + 4]
                self._start_part(raw)
                self._state = self._BODY
            else:
                return

    def _start_part(self, raw: bytes) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        headers: dict[str, str] = {}
        for line in raw.split(b"\r\n") if raw else ():
            name, sep, value = line.partition(b":")
            if not sep or not name.strip():
                raise MultipartError("a part header line is not NAME: VALUE")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        self._current = Part(headers, tempfile.SpooledTemporaryFile(max_size=self.spill_bytes))

    def _write(self, data: bytes | bytearray) -> None:
        assert self._current is not None
        self._current.body.write(data)
        self._current.size += len(data)

    def _finish_part(self) -> None:
        assert self._current is not None
        self.parts.append(self._current)
        self._current = None

    def close(self) -> list[Part]:
        """The parts of the complete body; raises :class:`MultipartError` (and frees every part) when
        the body ended before its closing delimiter or held no part."""
        if self._state != self._DONE:
            self.discard()
            if self._state == self._PREAMBLE:
                raise MultipartError("the body does not contain the boundary of its Content-Type")
            raise MultipartError("the body ends before its closing boundary (truncated)")
        if not self.parts:
            raise MultipartError("the body holds no part")
        return self.parts

    def discard(self) -> None:
        """Free every part (also the one being received)."""
        for part in self.parts:
            part.close()
        if self._current is not None:
            self._current.close()
            self._current = None
        self.parts = []
