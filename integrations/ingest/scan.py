"""The parse check in one pass over a received data set's bytes, for the common case.

Before it answers, the node must know that a data set parses: every element's VR known, every
sequence at any depth made of proper items (:func:`~medblip_dicom.reading.check_parsable`), and
it needs a few header values (the UIDs and the selection facts). pydicom parses the whole data set
into objects first (~1 us an element, ~260 elements in a CT slice, most of them private) and the
check then walks them again. :func:`scan` walks the bytes once instead, reading only each element's
tag, VR and length, and keeps the raw elements it is asked for, which pydicom then converts as it
would have (:class:`ScannedHeader`).

It is strict: explicit or implicit VR little endian only; every VR one pydicom knows; every length
inside the data set; sequences and their items properly nested and closed; undefined lengths only
for sequences and encapsulated Pixel Data. Anything else -- another transfer syntax, a truncated
value, an odd VR, a stray delimiter -- returns None, and the caller parses with pydicom as before,
which accepts or refuses it by its own rules. So a data set :func:`scan` accepts is one pydicom
parses and :func:`check_parsable` passes, and one it does not accept is judged exactly as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005
_DELIMITER_BYTES = b"\xfe\xff\xdd\xe0"
#: VRs of explicit VR data with a 4-byte length (after 2 reserved bytes); the others have 2 bytes.
_LONG = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2 and vr.value in (
    "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))
_SHORT = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2) - _LONG
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LENGTH = struct.Struct("<I")
#: The implicit VR syntax :func:`scan` reads; the explicit VR little endian ones it reads are
#: plain or compressed (encapsulated Pixel Data is a run of items): :func:`_little_endian_explicit`.
_SCANNED_IMPLICIT = frozenset({ImplicitVRLittleEndian})


#: A walk over the elements of a data set (:func:`_explicit` or :func:`_implicit`).
_Walk = Callable[..., int]


class _Unusual(Exception):
    """Something :func:`scan` leaves to pydicom."""


class ScannedHeader:
    """The top-level elements :func:`scan` kept, read like a data set's: :meth:`get` returns what
    ``Dataset.get`` would, converted by pydicom itself (``convert_raw_data_element``, in the data
    set's character set), without the per-read work of a whole ``Dataset``. Its data set passed the
    parse check."""

    file_meta = None

    def __init__(self, elements: dict[int, RawDataElement], encodings: str | list[str]) -> None:
        self._raw = elements
        self._values: dict[int, Any] = {}
        self._encodings = encodings

    def get(self, keyword: str, default: Any = None) -> Any:
        """The value of the element named `keyword` (``default`` when it was not kept or is absent)."""
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in self._raw:
            return default
        if tag not in self._values:
            encoding = default_encoding if tag == _CHARSET else self._encodings
            self._values[tag] = convert_raw_data_element(self._raw[tag], encoding=encoding).value
        return self._values[tag]

    def __contains__(self, keyword: str) -> bool:
        return tag_for_keyword(keyword) in self._raw


def scan(data: bytes, transfer_syntax: str, keep: Iterable[int]) -> ScannedHeader | None:
    """Check `data` (a data set, no file meta) in one pass and return its top-level elements in
    `keep`; None when anything is outside what this pass reads (the caller asks pydicom)."""
    implicit = transfer_syntax in _SCANNED_IMPLICIT
    if not implicit and not _little_endian_explicit(transfer_syntax):
        return None
    kept: dict[int, tuple[bytes, int, int]] = {}
    wanted = frozenset(keep)
    view = memoryview(data)
    try:
        walk = _implicit if implicit else _explicit
        if walk(view, 0, len(view), wanted, kept, nested=False) != len(view):
            return None
    except (_Unusual, struct.error):
        return None
    elements = {}
    for tag, (vr, length, at) in kept.items():
        name = None if implicit else vr.decode()
        value = bytes(view[at:at + length]) if length else empty_value_for_VR(name, raw=True)
        elements[tag] = RawDataElement(Tag(tag), name, length, value, at, implicit, True)
    try:  # the character set the texts are read in, as pydicom's reader finds it (or fails to)
        charset = elements.get(_CHARSET)
        encodings = default_encoding if charset is None else \
            convert_encodings(convert_raw_data_element(charset).value)
    except Exception:  # noqa: BLE001 - pydicom's reader fails on it too: let it say so
        return None
    return ScannedHeader(elements, encodings)


def _little_endian_explicit(transfer_syntax: str) -> bool:
    """Explicit VR little endian, plain or with encapsulated (compressed) pixel data."""
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    try:
        return uid == ExplicitVRLittleEndian or (uid.is_transfer_syntax and uid.is_little_endian and
                                                 not uid.is_implicit_VR and not uid.is_deflated)
    except ValueError:
        return False


def _explicit(view: memoryview, pos: int, end: int, wanted: frozenset[int], kept: dict[int, tuple[bytes, int, int]],
              *, nested: bool) -> int:
    """Walk explicit VR elements from `pos` to `end` (or, `nested`, to an item delimiter); returns
    where the walk stopped. (pydicom reads a data set whose first VR is not two capitals as implicit
    VR: such a VR is not in :data:`_SHORT` or :data:`_LONG`, so that is unusual here.)"""
    head, long_length, short, long = _TAG_VR_SHORT.unpack_from, _LENGTH.unpack_from, _SHORT, _LONG
    while pos < end:
        group, element, vr, length = head(view, pos)
        tag = group << 16 | element
        if group == 0xFFFE:
            if nested and tag == _ITEM_END and vr == b"\x00\x00" and length == 0:
                return pos  # the caller reads the delimiter's 8 bytes
            raise _Unusual
        if vr in short:
            at = pos + 8
        elif vr in long:
            (length,) = long_length(view, pos + 8)
            at = pos + 12
        else:
            raise _Unusual
        if length == _UNDEFINED:
            if vr == b"SQ":
                pos = _items(view, at, end, wanted, _explicit, until_delimiter=True)
            elif tag == _PIXEL_DATA and vr in (b"OB", b"OW") and not nested:
                pos = _fragments(view, at, end)
            else:
                raise _Unusual
            continue
        if at + length > end:
            raise _Unusual  # a value cut short: pydicom decides
        if vr == b"SQ":
            _items(view, at, at + length, wanted, _explicit, until_delimiter=False)
        elif not nested and tag in wanted:
            kept[tag] = (vr, length, at)
        pos = at + length
    return pos


def _implicit(view: memoryview, pos: int, end: int, wanted: frozenset[int], kept: dict[int, tuple[bytes, int, int]],
              *, nested: bool) -> int:
    """As :func:`_explicit`, for implicit VR: what is a sequence comes from the dictionary (an
    undefined length is a sequence unless the dictionary says otherwise, as pydicom reads it)."""
    if pos + 6 <= end and all(0x40 < b < 0x5B for b in view[pos + 4:pos + 6]):
        raise _Unusual  # looks like explicit VR: pydicom would switch to it
    while pos < end:
        group, element, length = _TAG_LENGTH.unpack_from(view, pos)
        tag = group << 16 | element
        at = pos + 8
        if group == 0xFFFE:
            if nested and tag == _ITEM_END and length == 0:
                return pos
            raise _Unusual
        vr = _dictionary_vr(tag)
        if length == _UNDEFINED:
            if vr not in ("SQ", None):
                raise _Unusual  # pydicom reads it to the delimiter's bytes
            pos = _items(view, at, end, wanted, _implicit, until_delimiter=True)
            continue
        if at + length > end:
            raise _Unusual
        if vr == "SQ":
            _items(view, at, at + length, wanted, _implicit, until_delimiter=False)
        elif not nested and tag in wanted:
            kept[tag] = (b"", length, at)
        pos = at + length
    return pos


def _dictionary_vr(tag: int) -> str | None:
    if tag >> 16 & 1:  # a private group: pydicom does not look it up
        return None
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _items(view: memoryview, pos: int, end: int, wanted: frozenset[int], walk: _Walk, *, until_delimiter: bool) -> int:
    """Walk a sequence's items from `pos`: to `end` (a defined length) or to its delimiter; returns
    the position after the sequence."""
    while pos + 8 <= end:
        group, element, length = _TAG_LENGTH.unpack_from(view, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END and until_delimiter:
            if length != 0:
                raise _Unusual
            return pos
        if tag != _ITEM:
            raise _Unusual
        if length == _UNDEFINED:
            stop = walk(view, pos, end, wanted, {}, nested=True)
            if stop + 8 > end or _TAG_LENGTH.unpack_from(view, stop) != (0xFFFE, 0xE00D, 0):
                raise _Unusual
            pos = stop + 8
        else:
            if pos + length > end or walk(view, pos, pos + length, wanted, {}, nested=True) != pos + length:
                raise _Unusual
            pos += length
    if until_delimiter or pos != end:
        raise _Unusual
    return pos


def _fragments(view: memoryview, pos: int, end: int) -> int:
    """Walk encapsulated Pixel Data: items of defined length, then the sequence delimiter, which must
    be the first run of its bytes (pydicom ends the value there, without reading the items)."""
    start = pos
    while pos + 8 <= end:
        group, element, length = _TAG_LENGTH.unpack_from(view, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END and length == 0:
            if view.obj.find(_DELIMITER_BYTES, start, end) != pos - 8:  # type: ignore[union-attr]
                raise _Unusual
            return pos
        if tag != _ITEM or length == _UNDEFINED or pos + length > end:
            raise _Unusual
        pos += length
    raise _Unusual
