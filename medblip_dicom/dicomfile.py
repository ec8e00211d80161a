"""Facts about DICOM data that are read without parsing a whole data set, each written once.

- :func:`content_offset`: where a Part 10 file's data set starts (after preamble and file meta).
- :func:`deflate_bomb_at`: whether a deflated data set would inflate beyond
  :data:`MAX_INFLATED_BYTES`, measured streaming (pydicom and pynetdicom inflate such a data set
  whole, in memory, before anything in it can be checked; zlib packs zeros ~1000:1).
- :func:`number_of_frames`: NumberOfFrames as a positive integer (absent, empty or broken: 1).
- :class:`BoundedReader`: a file whose reads never ask for more than the file holds, so that a
  corrupt length field cannot make a parser allocate gigabytes.

The reader (:mod:`medblip_dicom.reading`), the spool's header reader and the DICOM node all use
these, so a file is judged the same way wherever it arrives.
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Any, BinaryIO

#: One decoded frame may not exceed this many bytes (Rows x Columns x Samples x Bits Allocated / 8).
#: 256 MiB is ~11.5k x 11.5k at 16 bits; real radiographs are < 100 MiB (a mammogram ~40 MiB).
#: Protects against headers that claim absurd sizes: turning a frame into a picture peaks at about
#: seven times its bytes (integer, float and 8-bit copies), so this caps one image at ~2 GiB.
MAX_FRAME_BYTES = 256 << 20

#: Deflated Explicit VR Little Endian.
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
#: A deflated data set that inflates beyond this is refused without being inflated in memory.
MAX_INFLATED_BYTES = 2 * MAX_FRAME_BYTES

#: How much of a file's start holds its file meta header in practice (it is read to find the syntax).
HEAD_BYTES = 1 << 16

_PART10_GROUP_LENGTH = b"\x02\x00\x00\x00"


def content_offset(head: bytes) -> int:
    """Byte offset where the data set starts in `head` (a file's first bytes): after the 128-byte
    preamble, ``DICM`` and the file meta group of a Part 10 file; 0 for anything else."""
    if len(head) >= 144 and head[128:132] == b"DICM" and head[132:136] == _PART10_GROUP_LENGTH \
            and head[136:138] == b"UL":
        return 144 + int.from_bytes(head[140:144], "little")
    return 0


def deflated_data_set_offset(head: bytes) -> int | None:
    """Where the deflated data set starts, when `head` (file meta included) names the deflated
    transfer syntax; None for any other file."""
    end = content_offset(head)
    return end if end and DEFLATED_SYNTAX.encode() in head[144:end] else None


def inflates_beyond(stream: BinaryIO, limit: int = MAX_INFLATED_BYTES) -> bool:
    """True when the raw-deflate `stream` (read from its position) inflates to more than `limit` bytes.

    Streams in 1 MiB steps, so checking costs CPU but no memory. A corrupt stream returns False
    (the parser reports it).
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := stream.read(1 << 20):
            while chunk:
                total += len(inflater.decompress(chunk, 1 << 20))
                if total > limit:
                    return True
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        return False
    return False


def deflate_bomb_at(fh: BinaryIO, limit: int = MAX_INFLATED_BYTES) -> bool:
    """True when the Part 10 file open in `fh` (at its start) holds a deflated data set that
    inflates beyond `limit`. The file position is restored."""
    start = fh.tell()
    try:
        offset = deflated_data_set_offset(fh.read(HEAD_BYTES))
        if offset is None:
            return False
        fh.seek(start + offset)
        return inflates_beyond(fh, limit)
    finally:
        fh.seek(start)


class BoundedReader(io.BufferedReader):
    """A file opened for reading (``open(path, "rb")``) whose ``read(n)`` asks for no more than
    the bytes left in the file.

    CPython's buffered ``read(n)`` allocates n bytes before it reads: a length field corrupted to
    0xFFFFFFFF in a 30 kB file made pydicom allocate 4 GiB. Capped, the read comes back short,
    which pydicom reports as a truncated value. Only reads above :data:`HEAD_BYTES` look at the
    file's size (one ``fstat``), so a file that grows while it is read is still read whole.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(io.FileIO(os.fspath(path), "r"))

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > HEAD_BYTES:
            size = min(size, max(os.fstat(self.fileno()).st_size - self.tell(), 0))
        return super().read(size)


def number_of_frames(ds: Any) -> int:
    """NumberOfFrames of a data set as an integer >= 1 (1 when absent, empty or not a number)."""
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: pydicom cannot convert a corrupt value
        return 1
