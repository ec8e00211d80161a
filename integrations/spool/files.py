"""The spool's files: taking an instance in (durably, within the disk limits) and moving it out.

Layout of a spool folder::

    journal.sqlite   jobs and their states (see :mod:`.journal`)
    tmp/             partial writes; removed at start when their writer is gone
    inputs/          accepted instances, one file per job (names carry the writer's tag, no patient data)
    reports/<job>/   SRs (and pictures) waiting for delivery
    failed/          node inputs that failed, each with a ``.reason.txt`` beside it
    done/            node inputs kept after delivery (``[node] keep_inputs``)

Admission writes to ``tmp/``, fsyncs, renames into ``inputs/`` and fsyncs the folder before the
journal row is committed (:meth:`Spool.add_bytes`, :meth:`Spool.add_file`). Disposal moves a
finished job's input to done/ or failed/ (with its reason file) or deletes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from medblip_dicom.dicomfile import content_offset
from medblip_dicom.fileio import atomic_move, atomic_write_bytes, fsync_dir
from medblip_dicom.reading import read_header
from medblip_dicom.selection import FACT_KEYWORDS, InstanceFacts

from medblip_dicom.integrations.spool.journal import Job, JobState, SpoolError

SUBFOLDERS = ("tmp", "inputs", "reports", "failed", "done")
CHUNK = 1 << 20


class SpoolFullError(SpoolError):
    """The spool refuses new work: its byte limit or the disk's free-space floor would be crossed."""


@dataclass(frozen=True)
class InstanceInfo:
    """Identifying attributes of an input, read from its header (all optional: bad files have none)."""

    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    transfer_syntax_uid: str | None = None
    manufacturer: str | None = None
    #: :class:`~medblip_dicom.selection.InstanceFacts` as a dict: what selection decides by.
    facts: dict[str, Any] | None = None


#: What admission reads of an instance's header: the journal's columns and the selection facts.
INFO_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Manufacturer", *FACT_KEYWORDS)


def instance_info(ds: Any, transfer_syntax_uid: str | None = None) -> InstanceInfo:
    """The identifying attributes and selection facts of a data set (a value that cannot be read is absent).

    Each attribute is read once: the UIDs come from the selection facts, which read them too.
    """
    facts = InstanceFacts.from_dataset(ds)
    try:
        value = ds.get("Manufacturer")
        manufacturer = str(value).strip()[:128] if value is not None else ""
    except Exception:  # noqa: BLE001 - a broken value: the worker reports it
        manufacturer = ""
    if transfer_syntax_uid is None:
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        transfer_syntax_uid = str(ts) if ts else None
    return InstanceInfo(facts.sop_instance_uid[:128] or None, facts.sop_class_uid[:128] or None,
                        facts.study_instance_uid[:128] or None, facts.series_instance_uid[:128] or None,
                        transfer_syntax_uid, manufacturer or None,
                        {name: getattr(facts, name) for name in _FACT_FIELDS})


#: The fields of :class:`~medblip_dicom.selection.InstanceFacts` (its values are immutable: a
#: shallow dict equals ``asdict`` and costs a tenth of it).
_FACT_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceFacts))


def read_instance_info(path: Path | BinaryIO) -> InstanceInfo:
    """Read the identifying attributes from a file's header; an unreadable file gives empty info.

    A deflated data set that would inflate absurdly is left unread: the worker refuses it with the reason.
    """
    ds = read_header(path, INFO_TAGS)
    return InstanceInfo() if ds is None else instance_info(ds)


class ContentHasher:
    """SHA-256 of a stream's data set, skipping the file meta header (found in the first chunk):
    the same instance re-sent with another file meta is still the same content."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._skip: int | None = None
        self._seen = 0

    def update(self, chunk: bytes) -> None:
        if self._skip is None:
            self._skip = content_offset(chunk)
            if self._skip > len(chunk):  # implausible meta length: hash everything
                self._skip = 0
        start = max(0, self._skip - self._seen)
        self._seen += len(chunk)
        if start < len(chunk):
            self._sha.update(memoryview(chunk)[start:])

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class SpaceGuard:
    """The spool's admission limits: pending bytes (``max_bytes``, 0 = none) and the disk's free
    space (``min_free_bytes``), counting the bytes of admissions in progress."""

    def __init__(self, root: Path, max_bytes: int, min_free_bytes: int, pending_bytes: Callable[[], int]) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._pending_bytes = pending_bytes
        self._reserved = 0
        self._lock = threading.Lock()

    def check(self, size: int) -> None:
        """Raise :class:`SpoolFullError` when `size` more bytes would cross a limit."""
        with self._lock:
            self._check(size)

    def _check(self, size: int) -> None:
        if self.max_bytes:
            pending = self._pending_bytes() + self._reserved
            if pending + size > self.max_bytes:
                raise SpoolFullError(
                    f"spool {self.root} is full: {pending} bytes pending + {size} new would exceed "
                    f"[spool] max_bytes {self.max_bytes}"
                )
        free = shutil.disk_usage(self.root).free - self._reserved
        if free - size < self.min_free_bytes:
            raise SpoolFullError(
                f"spool {self.root}: only {free} bytes free on its disk; accepting {size} more would cross "
                f"[spool] min_free_bytes {self.min_free_bytes}"
            )

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold `size` bytes against the limits while an admission writes them."""
        with self._lock:
            self._check(size)
            self._reserved += size
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= size


def safe_relative_name(name: str, fallback: str) -> str:
    """A relative path that stays inside its folder: no absolute paths, no ``..``, no control characters."""
    parts = []
    for part in name.replace("\\", "/").split("/"):
        part = "".join(c for c in part if c.isprintable()).strip()
        if part in ("", ".", ".."):
            continue
        parts.append(part[:200])
    return "/".join(parts[-16:]) or fallback


def unique_path(path: Path, tag: str) -> Path:
    """`path` if free, else ``stem-<tag>suffix`` (then with a counter)."""
    if not path.exists():
        return path
    stem, suffix = path.stem, path.suffix
    candidate = path.with_name(f"{stem}-{tag}{suffix}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}-{tag}-{n}{suffix}")
    return candidate


def reason_text(job: Job) -> str:
    """The reason file's text: state, error class and message, DICOM status; UIDs but no patient data."""
    lines = [f"state: {job.state.value}", f"job: {job.id}", f"origin: {job.origin}"]
    if job.error_class:
        lines.append(f"error: {job.error_class}")
    lines.append(f"message: {job.reason or ''}")
    if job.dicom_status is not None:
        lines.append(f"dicom_status: 0x{job.dicom_status:04X}")
    for key in ("sop_instance_uid", "sop_class_uid", "study_instance_uid"):
        value = getattr(job, key)
        if value:
            lines.append(f"{key}: {value}")
    when = job.finished_at or job.updated_at
    lines.append("time: " + time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when)))
    return "\n".join(lines) + "\n"


def dispose(root: Path, job: Job) -> Path | None:
    """Move a final job's input to its done or failed folder (with a reason file unless delivered),
    or delete it; drop its reports. Returns where the input went (None: deleted). Raises OSError."""
    src = root / job.input_file
    fallback = f"{job.sop_instance_uid}.dcm" if job.sop_instance_uid and \
        all(c in "0123456789." for c in job.sop_instance_uid) else f"job-{job.id}.dcm"
    name = safe_relative_name(job.name, fallback)
    final: Path | None = None
    if job.state is JobState.FAILED:
        folder: Path | None = Path(job.failed_dir) if job.failed_dir else root / "failed"
    else:
        folder = Path(job.done_dir) if job.done_dir else None
    if folder is not None and src.exists():
        final = unique_path(folder / name, str(job.id))
        atomic_move(src, final)
        if job.state is not JobState.DELIVERED:
            atomic_write_bytes(final.with_name(final.name + ".reason.txt"), reason_text(job).encode())
    elif src.exists():
        src.unlink()
        fsync_dir(src.parent)
    shutil.rmtree(root / "reports" / str(job.id), ignore_errors=True)
    return final
