"""The file meta header a received data set is stored with, written directly.

A C-STORE carries a data set without a Part 10 header; the node stores it as a file by putting
the 128-byte preamble, ``DICM`` and a file meta group in front (what pynetdicom's
``Event.encoded_dataset(include_meta=True)`` writes, byte for byte). pynetdicom builds that group
as a pydicom data set and encodes it, ~0.3 ms per instance; the group is seven elements of fixed
layout, so :func:`part10_prefix` writes them with ``struct``, in microseconds. Anything unusual (a
UID that is empty or not ASCII) goes back to pynetdicom's encoder, which refuses what it cannot
write.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_PREAMBLE = b"\x00" * 128 + b"DICM"
#: (0002,0001) File Meta Information Version, OB, value 00 01.
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """A group-2 element with a 2-byte length (explicit VR little endian)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    return _short(element, b"UI", value + b"\x00" * (len(value) % 2))


_IMPLEMENTATION = _ui(0x0012, PYNETDICOM_IMPLEMENTATION_UID) + _short(
    0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    + b" " * (len(PYNETDICOM_IMPLEMENTATION_VERSION) % 2))


def part10_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes | None:
    """Preamble, ``DICM`` and the file meta group for a data set; None when a UID is empty, not
    ASCII or longer than a UI value may be (then pynetdicom's encoder decides)."""
    uids = (sop_class_uid, sop_instance_uid, transfer_syntax_uid)
    if not all(uid and uid.isascii() and len(uid) <= 64 for uid in uids):
        return None
    group = b"".join((_VERSION, _ui(0x0002, sop_class_uid), _ui(0x0003, sop_instance_uid),
                      _ui(0x0010, transfer_syntax_uid), _IMPLEMENTATION))
    return _PREAMBLE + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group)) + group


def received_file(event: Any) -> bytes:
    """A C-STORE's data set as the Part 10 file the spool keeps (its bytes as the peer sent them)."""
    request = event.request
    prefix = part10_prefix(str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or ""),
                           str(event.context.transfer_syntax))
    if prefix is None:
        return bytes(event.encoded_dataset(include_meta=True))
    return prefix + request.DataSet.getvalue()
