"""One SOPInstanceUID, one report: the first instance seen for a UID is captioned, later ones are not.

An SR's UIDs and its file name derive from the source's SOPInstanceUID
(:func:`medblip_dicom.report.report_uids`), as they must for a re-send to give the same report. Two
different images that share one SOPInstanceUID (a de-identification that reused UIDs, a modality
fault) would therefore get one SR path: the second write overwrites the first, and both would be
reported as captioned. So, within one run, :class:`SeenInstances` remembers the first source of
each SOPInstanceUID, and a later source with the same UID is not captioned:

- with different content: ``SOPInstanceUID already seen in <first> with different content; not
  captioned`` (a conflict: an image got no report; the commands exit with 1);
- with the same content (byte for byte after the file meta, or the same data set written the same
  way): ``same SOPInstanceUID and content as <first>: captioned once, as <first>``.

Both are skipped with the kind :data:`DUPLICATE`, which the spool of the services, the ``medblip
caption`` summary and the ``medblip batch`` results table use as well. Content is compared only
when a UID comes back (its digest is computed then), so a run without duplicates pays nothing for
paths; a bytes or ``Dataset`` source is digested when first seen, so that it need not be kept.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from pydicom.dataset import Dataset

from medblip_dicom.dicomfile import HEAD_BYTES, content_offset

#: The kind of a source skipped because its SOPInstanceUID was seen before (here and in the services).
DUPLICATE = "Duplicate"

#: How the reason of a conflicting duplicate (different content) starts, wherever it is written.
CONFLICT_PREFIX = "SOPInstanceUID already seen in "

#: A source as the pipeline takes it (a path, bytes or a data set).
Source = Union[str, "os.PathLike[str]", bytes, bytearray, Dataset]


def conflict_reason(first: str) -> str:
    """The reason of a later source whose SOPInstanceUID `first` had, with different content."""
    return f"{CONFLICT_PREFIX}{first} with different content; not captioned"


def same_content_reason(first: str) -> str:
    """The reason of a later source that is the same instance as `first` (same UID, same content)."""
    return f"same SOPInstanceUID and content as {first}: captioned once, as {first}"


def is_conflict(reason: str) -> bool:
    """True for the reason of a duplicate whose content differed from the first's (an image without a report)."""
    return reason.startswith(CONFLICT_PREFIX)


def content_digest(source: Source) -> str:
    """SHA-256 of the data set: a file's or bytes' content after the preamble and file meta (another
    sender's file meta is the same content), or a ``Dataset`` written as explicit VR little endian."""
    sha = hashlib.sha256()
    if isinstance(source, Dataset):
        from pydicom import dcmwrite

        plain = Dataset()
        plain.update(source)
        buffer = io.BytesIO()
        dcmwrite(buffer, plain, implicit_vr=False, little_endian=True, enforce_file_format=False)
        sha.update(buffer.getvalue())
        return sha.hexdigest()
    if isinstance(source, (bytes, bytearray)):
        sha.update(memoryview(source)[content_offset(bytes(source[:HEAD_BYTES])):])
        return sha.hexdigest()
    with open(Path(source), "rb") as fh:
        head = fh.read(HEAD_BYTES)
        offset = content_offset(head)
        sha.update(head[offset:] if offset <= len(head) else b"")
        if offset > len(head):
            fh.seek(offset)
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


@dataclass(frozen=True)
class Duplicate:
    """A source whose SOPInstanceUID an earlier source of the run had."""

    first: str  #: the earlier source, as its label (a path) or its place in the run
    same_content: bool

    @property
    def reason(self) -> str:
        return same_content_reason(self.first) if self.same_content else conflict_reason(self.first)

    @property
    def conflict(self) -> bool:
        """An image that gets no report of its own: its content differs from the first's."""
        return not self.same_content


class _First:
    """The first source of a SOPInstanceUID: its name, and its digest (now, or when first needed)."""

    __slots__ = ("name", "path", "digest")

    def __init__(self, name: str, source: Source, load: Callable[[str], Source]) -> None:
        self.name = name
        self.path: str | None = None
        self.digest: str | None = None
        if isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)  # digested only if the UID comes back
        else:
            self.digest = _digest_or_none(source, load)

    def content(self, load: Callable[[str], Source]) -> str | None:
        if self.digest is None and self.path is not None:
            self.digest = _digest_or_none(self.path, load)
        return self.digest


def _digest_or_none(source: Source, load: Callable[[str], Source]) -> str | None:
    try:
        return content_digest(load(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else source)
    except Exception:  # noqa: BLE001 - unreadable now (a file gone, a store down): counts as other content
        return None


class SeenInstances:
    """The first source of each SOPInstanceUID in one run (see the module docstring). Not thread-safe:
    call :meth:`check` from one thread, in input order."""

    def __init__(self, load: Callable[[str], Source] | None = None) -> None:
        """`load` turns a path into what is digested (default: the path itself, a local file); a
        batch job passes its reader of URIs."""
        self._first: dict[str, _First] = {}
        self._count = 0
        self._load: Callable[[str], Source] = load or (lambda path: path)

    def check(self, sop_instance_uid: str, label: str, source: Source, position: int | None = None) -> Duplicate | None:
        """None for the first source of `sop_instance_uid` (remembered), else what it duplicates.

        `label` names the source in reasons (a path); a source without a path is named by its
        `position` in the run (``input N``, 1-based; default: how many sources were checked).
        """
        self._count += 1
        if not sop_instance_uid:
            return None
        first = self._first.get(sop_instance_uid)
        if first is None:
            named = isinstance(source, (str, os.PathLike))
            where = label if named else f"input {position if position is not None else self._count}"
            self._first[sop_instance_uid] = _First(where, source, self._load)
            return None
        mine = _digest_or_none(source, self._load)
        theirs = first.content(self._load)
        return Duplicate(first.name, same_content=mine is not None and mine == theirs)
