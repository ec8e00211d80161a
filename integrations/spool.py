"""The durable job spool: a folder of inputs and reports plus a SQLite journal in WAL mode.

Both producers (the watch folder and the DICOM node) put instances in; the worker and the
delivery loop take them out. Nothing else is needed: the journal is one SQLite file.

Layout of a spool folder::

    journal.sqlite   jobs and their states (WAL mode, synchronous=FULL: a commit is on disk)
    tmp/             partial writes; cleared at start
    inputs/          accepted instances, one file per job (random names, no patient data)
    reports/<job>/   SRs (and pictures) waiting for delivery
    failed/          node inputs that failed, each with a ``.reason.txt`` beside it
    done/            node inputs kept after delivery (``[node] keep_inputs``)

Job states::

    received -> processing -> reported -> delivered
                     |            |
                     +-> failed <-+        (reason kept in the journal and beside the input)
                     +-> skipped           (non-images, our own outputs, duplicates)

Durability: an input is written to ``tmp/``, fsynced, renamed into ``inputs/`` and the folder is
fsynced before its journal row is committed; a producer acknowledges an instance only after
:meth:`Spool.add_bytes` / :meth:`Spool.add_file` returned. Final moves update the journal first
and move the file second, so a restart finishes any move a crash interrupted
(:meth:`Spool.recover`). Rows carry an owner token (process id + instance); jobs claimed by a
process that is gone go back to ``received``. Several processes may share one spool.

A duplicate is an instance whose SOPInstanceUID and content hash (SHA-256 of the data set after
the file meta header) match a job that has not failed; it is recorded as ``skipped``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from medblip_dicom.errors import MedblipError
from medblip_dicom.fileio import atomic_move, atomic_write_bytes, fsync_dir, pid_alive

logger = logging.getLogger(__name__)

#: Manufacturer written into every SR and picture: instances carrying it are never captioned.
OWN_MANUFACTURER = "medblip-dicom"

_SCHEMA_VERSION = 1
_CHUNK = 1 << 20
_ORPHAN_AGE_S = 60.0


class JobState(str, Enum):
    """Where a job stands (see the module docstring)."""

    RECEIVED = "received"
    PROCESSING = "processing"
    REPORTED = "reported"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


PENDING_STATES = (JobState.RECEIVED, JobState.PROCESSING, JobState.REPORTED)
FINAL_STATES = (JobState.DELIVERED, JobState.FAILED, JobState.SKIPPED)


class SpoolError(MedblipError):
    """The spool cannot do what was asked (unreadable journal, missing folder, ...)."""


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


@dataclass(frozen=True)
class Job:
    """One row of the journal."""

    id: int
    origin: str
    name: str
    input_file: str
    state: JobState
    sop_instance_uid: str | None
    sop_class_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str | None
    content_sha256: str
    size: int
    reason: str | None
    dicom_status: int | None
    received_at: float
    updated_at: float
    reported_at: float | None
    finished_at: float | None
    attempts: int
    next_attempt_at: float
    owner: str | None
    reports: tuple[str, ...]
    sr_sop_instance_uid: str | None
    done_dir: str | None
    failed_dir: str | None
    disposed: bool
    final_path: str | None


@dataclass(frozen=True)
class Admission:
    """What happened to an instance handed to the spool."""

    job_id: int
    state: JobState
    duplicate_of: int | None = None

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None


@dataclass(frozen=True)
class SpoolSummary:
    """Counts per state and the oldest pending job: what ``medblip status`` prints."""

    counts: dict[str, int]
    pending_bytes: int
    oldest_pending: Job | None
    now: float

    @property
    def queue_depth(self) -> int:
        return sum(self.counts.get(s.value, 0) for s in PENDING_STATES)

    @property
    def done(self) -> int:
        return self.counts.get("delivered", 0) + self.counts.get("skipped", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    name TEXT NOT NULL,
    input_file TEXT NOT NULL,
    state TEXT NOT NULL,
    sop_instance_uid TEXT,
    sop_class_uid TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    transfer_syntax_uid TEXT,
    content_sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    reason TEXT,
    dicom_status INTEGER,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    reported_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    owner TEXT,
    reports TEXT NOT NULL DEFAULT '[]',
    sr_sop_instance_uid TEXT,
    done_dir TEXT,
    failed_dir TEXT,
    disposed INTEGER NOT NULL DEFAULT 0,
    final_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_by_instance ON jobs(sop_instance_uid, content_sha256);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs(study_instance_uid);
"""

#: Owner tokens of the spools open in this process (a token not here and not of a live process is stale).
_LIVE_OWNERS: set[str] = set()
_LIVE_LOCK = threading.Lock()


def _owner_alive(owner: str) -> bool:
    with _LIVE_LOCK:
        if owner in _LIVE_OWNERS:
            return True
    try:
        pid = int(owner.split(":", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # this process, but an instance that is closed
    return pid_alive(pid)


_OWNED_FILE = re.compile(r"^(\d+)-([0-9a-f]{12})-")


def _abandoned(path: Path, cutoff: float) -> bool:
    """A file in tmp/ or inputs/ without a journal row may go when the spool instance that wrote it
    is gone (its name starts with the owner's tag), or, for files of unknown origin, when it is old."""
    match = _OWNED_FILE.match(path.name)
    if match is not None and not _owner_alive(f"{match.group(1)}:{match.group(2)}"):
        return True
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


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


def safe_relative_name(name: str, fallback: str) -> str:
    """A relative path that stays inside its folder: no absolute paths, no ``..``, no control characters."""
    parts = []
    for part in name.replace("\\", "/").split("/"):
        part = "".join(c for c in part if c.isprintable()).strip()
        if part in ("", ".", ".."):
            continue
        parts.append(part[:200])
    return "/".join(parts[-16:]) or fallback


def content_offset(head: bytes) -> int:
    """Byte offset where the data set starts: after the preamble and file meta of a Part 10 file."""
    if len(head) >= 144 and head[128:132] == b"DICM" and head[132:136] == b"\x02\x00\x00\x00" \
            and head[136:138] == b"UL":
        return 144 + int.from_bytes(head[140:144], "little")
    return 0


class _Hasher:
    """SHA-256 of a stream's data set, skipping the file meta header (found in the first chunk)."""

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


def read_instance_info(path: Path | BinaryIO) -> InstanceInfo:
    """Read the identifying attributes from a file's header; an unreadable file gives empty info."""
    import pydicom

    from medblip_dicom.reading import deflated_data_set_offset, inflates_beyond

    try:
        # A deflated data set is inflated whole by pydicom: measure it first (streaming), and leave
        # one that would inflate absurdly to the worker, which refuses it with the reason.
        with (open(path, "rb") if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path)) as fh:
            start = fh.tell()
            offset = deflated_data_set_offset(fh.read(1 << 16))
            if offset is not None:
                fh.seek(start + offset)
                if inflates_beyond(fh):
                    return InstanceInfo()
            fh.seek(start)
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, defer_size=4096,
                             specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                                            "SeriesInstanceUID", "Manufacturer"])
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None

        def get(keyword: str) -> str | None:
            value = ds.get(keyword)
            text = str(value).strip() if value is not None else ""
            return text[:128] or None

        return InstanceInfo(get("SOPInstanceUID"), get("SOPClassUID"), get("StudyInstanceUID"),
                            get("SeriesInstanceUID"), str(ts) if ts else None, get("Manufacturer"))
    except Exception:  # noqa: BLE001 - any parse failure: the worker reports the reason
        return InstanceInfo()


class Spool:
    """A spool folder and its journal. Thread-safe; long waits take a timeout.

    Parameters
    ----------
    root
        The spool folder (created if missing). Must be on a local disk.
    max_bytes
        Refuse new inputs when the pending inputs would exceed this many bytes (0 = no limit).
    min_free_bytes
        Refuse new inputs when the disk's free space would drop below this.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 0,
                 min_free_bytes: int = 256 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        for sub in ("tmp", "inputs", "reports", "failed", "done"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.owner = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
        #: Prefix of this instance's files in tmp/ and inputs/: recovery can tell whose they are.
        self._file_tag = self.owner.replace(":", "-")
        self._lock = threading.RLock()
        self._reserved = 0
        self.received_event = threading.Event()
        self.reported_event = threading.Event()
        try:
            self._db = sqlite3.connect(self.root / "journal.sqlite", isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool {self.root}: the journal cannot use WAL mode (got {mode}); "
                                 "put the spool on a local disk")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.root}: cannot open the journal ({exc})") from None
        with _LIVE_LOCK:
            _LIVE_OWNERS.add(self.owner)
        self._closed = False

    # -- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release this instance's claims (processing jobs go back to received) and close the journal."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(sqlite3.Error):
                with self._write() as db:
                    db.execute("UPDATE jobs SET state=?, owner=NULL, updated_at=? WHERE owner=? AND state=?",
                               (JobState.RECEIVED.value, time.time(), self.owner, JobState.PROCESSING.value))
                    db.execute("UPDATE jobs SET owner=NULL WHERE owner=?", (self.owner,))
            self._db.close()
            self._closed = True
        with _LIVE_LOCK:
            _LIVE_OWNERS.discard(self.owner)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: takes the write lock across processes)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        data["state"] = JobState(data["state"])
        data["reports"] = tuple(json.loads(data["reports"] or "[]"))
        data["disposed"] = bool(data["disposed"])
        return Job(**data)

    def job(self, job_id: int) -> Job:
        """The job with this id (raises KeyError if there is none)."""
        rows = self._rows("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise KeyError(job_id)
        return self._job(rows[0])

    def jobs(self, state: JobState | str | None = None) -> list[Job]:
        """All jobs, or those in one state, oldest first."""
        if state is None:
            rows = self._rows("SELECT * FROM jobs ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM jobs WHERE state=? ORDER BY id", (JobState(state).value,))
        return [self._job(r) for r in rows]

    def input_path(self, job: Job) -> Path:
        """Where the job's input lies while it is pending."""
        return self.root / job.input_file

    # -- admission ------------------------------------------------------------------------------

    def pending_bytes(self) -> int:
        """Bytes of inputs still in the spool (received, processing, reported)."""
        row = self._rows(
            "SELECT COALESCE(SUM(size), 0) FROM jobs WHERE state IN (?, ?, ?)",
            tuple(s.value for s in PENDING_STATES),
        )[0]
        return int(row[0])

    @contextlib.contextmanager
    def _reservation(self, size: int) -> Iterator[None]:
        with self._lock:
            self._check_space(size)
            self._reserved += size
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= size

    def _check_space(self, size: int) -> None:
        if self.max_bytes:
            pending = self.pending_bytes() + self._reserved
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

    def has_room(self, size: int) -> bool:
        """True when an input of `size` bytes would be accepted now."""
        try:
            with self._lock:
                self._check_space(size)
        except SpoolFullError:
            return False
        return True

    def add_bytes(self, data: bytes, *, origin: str, name: str, info: InstanceInfo | None = None,
                  done_dir: str | os.PathLike[str] | None = None,
                  failed_dir: str | os.PathLike[str] | None = None) -> Admission:
        """Store an instance (a Part 10 file's bytes) durably and journal it.

        Returns only once the instance and its row are on disk. Raises :class:`SpoolFullError`
        when the limits would be crossed (nothing is stored then).
        """
        with self._reservation(len(data)):
            tmp = self.root / "tmp" / f"{self._file_tag}-{uuid.uuid4().hex}.part"
            hasher = _Hasher()
            hasher.update(data)
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                if info is None:
                    info = read_instance_info(tmp)
                return self._admit(tmp, len(data), hasher.hexdigest(), info, origin, name, done_dir, failed_dir)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def add_file(self, path: str | os.PathLike[str], *, origin: str, name: str,
                 done_dir: str | os.PathLike[str] | None = None,
                 failed_dir: str | os.PathLike[str] | None = None) -> Admission:
        """Copy a file into the spool durably and journal it (the caller removes the original after).

        Raises :class:`SpoolFullError` when the limits would be crossed, OSError when the file
        cannot be read.
        """
        src = Path(path)
        size = src.stat().st_size
        with self._reservation(size):
            tmp = self.root / "tmp" / f"{self._file_tag}-{uuid.uuid4().hex}.part"
            hasher = _Hasher()
            copied = 0
            try:
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    while chunk := fin.read(_CHUNK):
                        hasher.update(chunk)
                        fout.write(chunk)
                        copied += len(chunk)
                    fout.flush()
                    os.fsync(fout.fileno())
                info = read_instance_info(tmp)
                return self._admit(tmp, copied, hasher.hexdigest(), info, origin, name, done_dir, failed_dir)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _admit(self, tmp: Path, size: int, sha: str, info: InstanceInfo | None, origin: str, name: str,
               done_dir: str | os.PathLike[str] | None, failed_dir: str | os.PathLike[str] | None) -> Admission:
        info = info or InstanceInfo()
        rel = f"inputs/{self._file_tag}-{uuid.uuid4().hex}.dcm"
        os.replace(tmp, self.root / rel)
        fsync_dir(self.root / "inputs")
        now = time.time()
        state, reason, duplicate_of = JobState.RECEIVED, None, None
        try:
            with self._write() as db:
                if info.sop_instance_uid:
                    row = db.execute(
                        "SELECT id FROM jobs WHERE sop_instance_uid=? AND content_sha256=? AND state<>? "
                        "AND NOT (state=? AND reason LIKE 'duplicate of job%') ORDER BY id LIMIT 1",
                        (info.sop_instance_uid, sha, JobState.FAILED.value, JobState.SKIPPED.value),
                    ).fetchone()
                    if row is not None:
                        duplicate_of = int(row[0])
                        state = JobState.SKIPPED
                        reason = f"duplicate of job {duplicate_of} (same SOPInstanceUID and content)"
                if duplicate_of is None and info.manufacturer == OWN_MANUFACTURER:
                    state, reason = JobState.SKIPPED, "written by medblip-dicom itself (loop guard): not captioned"
                cur = db.execute(
                    "INSERT INTO jobs (origin, name, input_file, state, sop_instance_uid, sop_class_uid, "
                    "study_instance_uid, series_instance_uid, transfer_syntax_uid, content_sha256, size, reason, "
                    "received_at, updated_at, finished_at, done_dir, failed_dir) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (origin, name, rel, state.value, info.sop_instance_uid, info.sop_class_uid,
                     info.study_instance_uid, info.series_instance_uid, info.transfer_syntax_uid, sha, size,
                     reason, now, now, now if state is JobState.SKIPPED else None,
                     os.fspath(done_dir) if done_dir is not None else None,
                     os.fspath(failed_dir) if failed_dir is not None else None),
                )
                job_id = int(cur.lastrowid)
        except BaseException:
            with contextlib.suppress(OSError):
                (self.root / rel).unlink()
            raise
        if state is JobState.SKIPPED:
            logger.info("job %d: %s, skipped: %s (SOPInstanceUID %s)", job_id, origin, reason, info.sop_instance_uid)
            self._dispose_job(self.job(job_id))
        else:
            logger.info("job %d: received from %s (SOPInstanceUID %s, study %s, %d bytes)",
                        job_id, origin, info.sop_instance_uid, info.study_instance_uid, size)
            self.received_event.set()
        return Admission(job_id, state, duplicate_of)

    # -- worker side ---------------------------------------------------------------------------

    def count(self, state: JobState) -> int:
        return int(self._rows("SELECT COUNT(*) FROM jobs WHERE state=?", (state.value,))[0][0])

    def oldest_received_at(self) -> float | None:
        """Arrival time of the oldest job waiting for the worker."""
        row = self._rows("SELECT MIN(received_at) FROM jobs WHERE state=?", (JobState.RECEIVED.value,))[0]
        return float(row[0]) if row[0] is not None else None

    def claim(self, limit: int) -> list[Job]:
        """Move up to `limit` received jobs (oldest first) to processing, owned by this instance."""
        now = time.time()
        with self._write() as db:
            rows = db.execute("SELECT id FROM jobs WHERE state=? ORDER BY id LIMIT ?",
                              (JobState.RECEIVED.value, limit)).fetchall()
            ids = [int(r[0]) for r in rows]
            if ids:
                marks = ",".join("?" * len(ids))
                db.execute(f"UPDATE jobs SET state=?, owner=?, updated_at=? WHERE id IN ({marks})",
                           (JobState.PROCESSING.value, self.owner, now, *ids))
        return [self.job(i) for i in ids]

    def release(self, job_ids: Sequence[int], *, count_attempt: bool = False) -> None:
        """Hand processing jobs back (to received), e.g. when the model failed for the whole batch."""
        if not job_ids:
            return
        marks = ",".join("?" * len(job_ids))
        with self._write() as db:
            db.execute(f"UPDATE jobs SET state=?, owner=NULL, updated_at=?, attempts=attempts+? "
                       f"WHERE id IN ({marks}) AND state=?",
                       (JobState.RECEIVED.value, time.time(), int(count_attempt), *job_ids, JobState.PROCESSING.value))
        self.received_event.set()

    def report_dir(self, job_id: int) -> Path:
        """The folder where the worker writes a job's SR (and picture) before it is reported."""
        return self.root / "reports" / str(job_id)

    def mark_reported(self, job_id: int, report_files: Sequence[Path], sr_sop_instance_uid: str) -> None:
        """The job's reports are durably in the spool: ready for delivery."""
        rels = [os.path.relpath(p, self.root) for p in report_files]
        now = time.time()
        with self._write() as db:
            db.execute("UPDATE jobs SET state=?, owner=NULL, reports=?, sr_sop_instance_uid=?, reported_at=?, "
                       "updated_at=?, attempts=0, next_attempt_at=0 WHERE id=?",
                       (JobState.REPORTED.value, json.dumps(rels), sr_sop_instance_uid, now, now, job_id))
        self.reported_event.set()

    def finish(self, job_id: int, state: JobState, reason: str | None = None,
               dicom_status: int | None = None) -> Job:
        """Put a job in a final state (delivered, failed, skipped) and move its input where it belongs."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state} is not a final state")
        now = time.time()
        with self._write() as db:
            db.execute("UPDATE jobs SET state=?, reason=COALESCE(?, reason), dicom_status=?, owner=NULL, "
                       "finished_at=?, updated_at=? WHERE id=?",
                       (state.value, reason, dicom_status, now, now, job_id))
        job = self.job(job_id)
        self._dispose_job(job)
        return self.job(job_id)

    # -- delivery side -------------------------------------------------------------------------

    def claim_for_delivery(self, *, quiet_s: float = 0.0, now: float | None = None,
                           ignore_quiet: bool = False) -> list[list[Job]]:
        """Claim reported jobs due for delivery, grouped by study.

        With a quiet time, a study's reports are held until none of its instances arrived for
        `quiet_s` seconds and none is still waiting for the model; then they go together.
        """
        now = time.time() if now is None else now
        groups: dict[str | None, list[int]] = {}
        with self._write() as db:
            rows = db.execute("SELECT id, study_instance_uid FROM jobs WHERE state=? AND owner IS NULL "
                              "AND next_attempt_at<=? ORDER BY id",
                              (JobState.REPORTED.value, now)).fetchall()
            for row in rows:
                groups.setdefault(row[1], []).append(int(row[0]))
            if quiet_s > 0 and not ignore_quiet:
                for study in list(groups):
                    if study is None:
                        continue
                    last, waiting = db.execute(
                        "SELECT MAX(received_at), SUM(state IN (?, ?)) FROM jobs WHERE study_instance_uid=?",
                        (JobState.RECEIVED.value, JobState.PROCESSING.value, study),
                    ).fetchone()
                    if (waiting or 0) > 0 or (last is not None and now - float(last) < quiet_s):
                        del groups[study]
            ids = [i for group in groups.values() for i in group]
            if ids:
                marks = ",".join("?" * len(ids))
                db.execute(f"UPDATE jobs SET owner=? WHERE id IN ({marks})", (self.owner, *ids))
        return [[self.job(i) for i in group] for group in groups.values()]

    def next_delivery_due(self) -> float | None:
        """Earliest next_attempt_at among unclaimed reported jobs."""
        row = self._rows("SELECT MIN(next_attempt_at) FROM jobs WHERE state=? AND owner IS NULL",
                         (JobState.REPORTED.value,))[0]
        return float(row[0]) if row[0] is not None else None

    def defer_delivery(self, job_ids: Sequence[int], reason: str, *, initial_s: float, max_s: float) -> float:
        """Delivery failed for now: count an attempt and schedule the next with exponential backoff.

        Returns the delay until the next attempt (of the first job).
        """
        now = time.time()
        delay = initial_s
        with self._write() as db:
            for job_id in job_ids:
                attempts = int(db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0]) + 1
                delay = min(max_s, initial_s * (2 ** min(attempts - 1, 30)))
                db.execute("UPDATE jobs SET attempts=?, next_attempt_at=?, reason=?, owner=NULL, updated_at=? "
                           "WHERE id=?", (attempts, now + delay, reason, now, job_id))
        self.reported_event.set()
        return delay

    def unclaim(self, job_ids: Sequence[int]) -> None:
        """Give claimed reported jobs back without counting an attempt (e.g. on shutdown)."""
        if not job_ids:
            return
        marks = ",".join("?" * len(job_ids))
        with self._write() as db:
            db.execute(f"UPDATE jobs SET owner=NULL WHERE id IN ({marks}) AND owner=?", (*job_ids, self.owner))

    # -- recovery and disposal -----------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Make the spool consistent after a crash; call once at start. Returns what was done.

        - processing jobs whose owner is gone go back to received (they will be captioned again;
          the SR's UID is deterministic, so nothing is reported twice);
        - delivery claims of owners that are gone are dropped;
        - final jobs whose input was not moved yet are moved now;
        - pending jobs whose input vanished fail with that reason;
        - files in inputs/ without a row (a crash between rename and commit: never acknowledged,
          the producer still has the original) and partial files in tmp/ are removed: at once when
          the spool instance that wrote them is gone (their names carry its owner tag), else once
          they are a minute old.
        """
        done = {"requeued": 0, "unclaimed": 0, "disposed": 0, "missing": 0, "orphans": 0}
        done["requeued"], done["unclaimed"] = self._release_dead_claims()
        for job in [self._job(r) for r in self._rows(
                "SELECT * FROM jobs WHERE state IN (?, ?, ?) AND disposed=0", tuple(s.value for s in FINAL_STATES))]:
            self._dispose_job(job)
            done["disposed"] += 1
        for job in [self._job(r) for r in self._rows(
                "SELECT * FROM jobs WHERE state IN (?, ?)", (JobState.RECEIVED.value, JobState.REPORTED.value))]:
            if not self.input_path(job).exists():
                self.finish(job.id, JobState.FAILED, "the input file vanished from the spool (removed by hand?)")
                done["missing"] += 1
        known = {r[0] for r in self._rows("SELECT input_file FROM jobs WHERE disposed=0")}
        cutoff = time.time() - _ORPHAN_AGE_S
        for path in (self.root / "inputs").iterdir():
            rel = f"inputs/{path.name}"
            if rel not in known and _abandoned(path, cutoff):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    done["orphans"] += 1
        for path in (self.root / "tmp").iterdir():
            if _abandoned(path, cutoff):
                with contextlib.suppress(OSError):
                    path.unlink()
        if any(done.values()):
            logger.warning("spool %s recovered: %s", self.root, ", ".join(f"{k} {v}" for k, v in done.items() if v))
        return done

    def release_dead_claims(self) -> int:
        """Hand back the claims of processes that are gone (processing jobs go back to received).

        :meth:`recover` does this at start; a service also calls it now and then, because a
        process killed just before the start may not have been gone yet (its worker process,
        say, still exiting) and its jobs would otherwise wait for the next restart.
        Returns how many claims were released.
        """
        requeued, unclaimed = self._release_dead_claims()
        if requeued or unclaimed:
            logger.warning("spool %s: released %d job(s) claimed by processes that are gone", self.root,
                           requeued + unclaimed)
        return requeued + unclaimed

    def release_claims_of_dead_process(self, pid: int, *, max_attempts: int, reason: str) -> int:
        """A process we watched died (a worker process that crashed): its processing jobs count one
        attempt each and go back to received, or fail with `reason` once they reach `max_attempts`.

        Unlike a whole service killed from outside, a worker that dies while its service lives
        points at the jobs it held. Returns how many jobs failed.
        """
        rows = self._rows("SELECT id, owner, attempts FROM jobs WHERE state=? AND owner LIKE ?",
                          (JobState.PROCESSING.value, f"{int(pid)}:%"))
        failed: list[int] = []
        now = time.time()
        with self._write() as db:
            for row in rows:
                attempts = int(row["attempts"]) + 1
                if attempts >= max_attempts:
                    failed.append(int(row["id"]))
                    db.execute("UPDATE jobs SET attempts=? WHERE id=?", (attempts, row["id"]))
                else:
                    db.execute("UPDATE jobs SET state=?, owner=NULL, attempts=?, updated_at=? WHERE id=? AND owner=?",
                               (JobState.RECEIVED.value, attempts, now, row["id"], row["owner"]))
        for job_id in failed:
            logger.error("job %d failed: %s", job_id, reason)
            self.finish(job_id, JobState.FAILED, reason)
        if len(rows) > len(failed):
            self.received_event.set()
        return len(failed)

    def _release_dead_claims(self) -> tuple[int, int]:
        stale = [r for r in self._rows("SELECT id, owner, state FROM jobs WHERE state IN (?, ?) AND owner IS NOT NULL",
                                       (JobState.PROCESSING.value, JobState.REPORTED.value))
                 if not _owner_alive(r["owner"])]
        requeued = unclaimed = 0
        if stale:
            now = time.time()
            with self._write() as db:
                for row in stale:
                    if row["state"] == JobState.PROCESSING.value:
                        db.execute("UPDATE jobs SET state=?, owner=NULL, updated_at=? WHERE id=? AND owner=?",
                                   (JobState.RECEIVED.value, now, row["id"], row["owner"]))
                        requeued += 1
                    else:
                        db.execute("UPDATE jobs SET owner=NULL WHERE id=? AND owner=?", (row["id"], row["owner"]))
                        unclaimed += 1
        if requeued:
            self.received_event.set()
        if unclaimed:
            self.reported_event.set()
        return requeued, unclaimed

    def _dispose_job(self, job: Job) -> None:
        """Move a final job's input to done/ or failed/ (with a reason file), or delete it; drop its reports."""
        if job.disposed:
            return
        src = self.input_path(job)
        fallback = f"{job.sop_instance_uid}.dcm" if job.sop_instance_uid and \
            all(c in "0123456789." for c in job.sop_instance_uid) else f"job-{job.id}.dcm"
        name = safe_relative_name(job.name, fallback)
        final: Path | None = None
        try:
            if job.state is JobState.FAILED:
                folder = Path(job.failed_dir) if job.failed_dir else self.root / "failed"
            elif job.done_dir:
                folder = Path(job.done_dir)
            else:
                folder = None
            if folder is not None and src.exists():
                final = unique_path(folder / name, str(job.id))
                atomic_move(src, final)
                if job.state is not JobState.DELIVERED:
                    atomic_write_bytes(final.with_name(final.name + ".reason.txt"), self.reason_text(job).encode())
            elif src.exists():
                src.unlink()
                fsync_dir(src.parent)
            shutil.rmtree(self.report_dir(job.id), ignore_errors=True)
        except OSError as exc:
            logger.error("job %d: cannot move its input out of the spool (%s); will retry at the next start",
                         job.id, exc)
            return
        with self._write() as db:
            db.execute("UPDATE jobs SET disposed=1, final_path=? WHERE id=?",
                       (os.fspath(final) if final is not None else None, job.id))

    @staticmethod
    def reason_text(job: Job) -> str:
        """The reason file's text: state, error and DICOM status; UIDs but no patient data."""
        lines = [f"state: {job.state.value}", f"job: {job.id}", f"origin: {job.origin}"]
        reason = job.reason or ""
        error, _, message = reason.partition(": ") if reason[:1].isupper() and ": " in reason else ("", "", reason)
        if error and error.isidentifier():
            lines.append(f"error: {error}")
            lines.append(f"message: {message}")
        else:
            lines.append(f"message: {reason}")
        if job.dicom_status is not None:
            lines.append(f"dicom_status: 0x{job.dicom_status:04X}")
        for key in ("sop_instance_uid", "sop_class_uid", "study_instance_uid"):
            value = getattr(job, key)
            if value:
                lines.append(f"{key}: {value}")
        when = job.finished_at or job.updated_at
        lines.append("time: " + time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when)))
        return "\n".join(lines) + "\n"

    # -- visibility ----------------------------------------------------------------------------

    def summary(self) -> SpoolSummary:
        """Counts per state, pending bytes and the oldest pending job."""
        counts = {s.value: 0 for s in JobState}
        for row in self._rows("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[row[0]] = int(row[1])
        rows = self._rows("SELECT * FROM jobs WHERE state IN (?, ?, ?) ORDER BY received_at, id LIMIT 1",
                          tuple(s.value for s in PENDING_STATES))
        oldest = self._job(rows[0]) if rows else None
        return SpoolSummary(counts, self.pending_bytes(), oldest, time.time())


def open_readonly_summary(root: str | os.PathLike[str]) -> SpoolSummary:
    """Summarise a spool without creating or changing anything (for ``medblip status``)."""
    path = Path(root) / "journal.sqlite"
    if not path.is_file():
        raise SpoolError(f"{root} is not a spool folder (no journal.sqlite in it)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open {path}: {exc}") from None
    db.row_factory = sqlite3.Row
    try:
        counts = {s.value: 0 for s in JobState}
        for row in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[row[0]] = int(row[1])
        pend = tuple(s.value for s in PENDING_STATES)
        pending_bytes = int(db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM jobs WHERE state IN (?, ?, ?)", pend).fetchone()[0])
        row = db.execute("SELECT * FROM jobs WHERE state IN (?, ?, ?) ORDER BY received_at, id LIMIT 1",
                         pend).fetchone()
        oldest = Spool._job(row) if row is not None else None
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()
    return SpoolSummary(counts, pending_bytes, oldest, time.time())
