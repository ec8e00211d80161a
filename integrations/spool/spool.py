"""The durable job spool: a folder of inputs and reports plus a SQLite journal (WAL mode).

Every producer (the watch folder, the DICOM node) puts instances in; the worker and the delivery
loop take them out. :class:`Spool` wires the parts, each in a module of its own: the journal
(:mod:`.journal`: states, claims, summary), the files (:mod:`.files`: admission within the disk
limits, disposal, reason files), owners (:mod:`.owners`: who holds a claim, and whether it is alive)
and recovery (:mod:`.recovery`). It has one way to hand claims back, :meth:`Spool.release`.

Durability: a producer acknowledges an instance only after :meth:`Spool.add_bytes` /
:meth:`Spool.add_file` returned, and they return once the file and its journal row are on disk
(instances arriving at the same time share the folder fsync and the journal commit: :mod:`.admit`).
Final moves update the journal first and move the file second, so a restart finishes any move a
crash interrupted. Several processes may share one spool.

A duplicate is an instance whose SOPInstanceUID a job that has not failed holds already: with the
same content hash (SHA-256 of the data set after the file meta header) it is the same instance
again, with another it is a different image that would take the first one's report (one
SOPInstanceUID, one report); either is recorded as ``skipped`` (``Duplicate``), naming the first job.

The two *doorbells* (``received``: work for the worker; ``reported``: work for delivery) are
passed in: ``threading.Event`` by default, process-shared
:class:`~medblip_dicom.integrations.spool.doorbell.Doorbell` pipes when the worker runs in a process of
its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from medblip_dicom.integrations.spool import files, owners, recovery
from medblip_dicom.integrations.spool.admit import (  # noqa: F401 - OWN_MANUFACTURER re-exported
    OWN_MANUFACTURER, Admitted, Arrival, GroupCommit, commit_arrivals,
)
from medblip_dicom.integrations.spool.files import ContentHasher, InstanceInfo, SpaceGuard, read_instance_info
from medblip_dicom.integrations.spool.journal import FINAL_STATES, Job, JobState, Journal, SpoolSummary

logger = logging.getLogger(__name__)

class Bell(Protocol):
    """What the spool needs of a doorbell (``threading.Event`` and ``Doorbell`` both are)."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def is_set(self) -> bool: ...


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
class Released:
    """What :meth:`Spool.release` did with each job it was given."""

    requeued: list[int] = field(default_factory=list)
    unclaimed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.requeued) + len(self.unclaimed) + len(self.failed)


class Spool:
    """A spool folder and its journal. Thread-safe.

    Parameters
    ----------
    root
        The spool folder (created if missing). Must be on a local disk.
    max_bytes
        Refuse new inputs when the pending inputs would exceed this many bytes (0 = no limit).
    min_free_bytes
        Refuse new inputs when the disk's free space would drop below this.
    received, reported
        The doorbells rung when a job arrives and when a report is ready (default: new
        ``threading.Event`` objects).
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 0, min_free_bytes: int = 256 * 1024 * 1024,
                 received: Bell | None = None, reported: Bell | None = None) -> None:
        self.root = Path(root)
        for sub in files.SUBFOLDERS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.root / "journal.sqlite")
        self.received_event: Bell = received if received is not None else threading.Event()
        self.reported_event: Bell = reported if reported is not None else threading.Event()
        self.owner = owners.new_owner()
        #: Prefix of this instance's files in tmp/ and inputs/: recovery can tell whose they are.
        self._file_tag = owners.file_tag(self.owner)
        self.space = SpaceGuard(self.root, max_bytes, min_free_bytes, self.journal.pending_bytes)
        self._commits: GroupCommit[Arrival, Admitted] = GroupCommit(
            lambda arrivals: commit_arrivals(self.root, self.journal, arrivals))
        self._closed = False
        self._close_lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self.space.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.space.max_bytes = value

    def close(self) -> None:
        """Release this instance's claims (processing jobs go back to received) and close the journal."""
        with self._close_lock:
            if self._closed:
                return
            with contextlib.suppress(Exception):
                self.release([j.id for j in self.journal.jobs(where="owner=?", params=(self.owner,))])
            self.journal.close()
            self._closed = True
        owners.retire(self.owner)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def job(self, job_id: int) -> Job:
        """The job with this id (raises KeyError if there is none)."""
        return self.journal.job(job_id)

    def jobs(self, state: JobState | str | None = None) -> list[Job]:
        """All jobs, or those in one state, oldest first."""
        return self.journal.jobs(state)

    def count(self, state: JobState) -> int:
        return self.journal.count(state)

    def claimable(self) -> tuple[int, float | None]:
        """How many jobs the worker may claim now, and when the oldest of them arrived."""
        return self.journal.claimable()

    def pending_bytes(self) -> int:
        return self.journal.pending_bytes()

    def summary(self) -> SpoolSummary:
        """Counts per state, pending bytes and the oldest pending job."""
        return self.journal.summary()

    def input_path(self, job: Job) -> Path:
        """Where the job's input lies while it is pending."""
        return self.root / job.input_file

    def report_dir(self, job_id: int) -> Path:
        """The folder where the worker writes a job's SR (and picture) before it is reported."""
        return self.root / "reports" / str(job_id)

    # -- admission ------------------------------------------------------------------------------

    def has_room(self, size: int) -> bool:
        """True when an input of `size` bytes would be accepted now."""
        try:
            self.space.check(size)
        except files.SpoolFullError:
            return False
        return True

    def add_bytes(self, data: bytes, *, origin: str, name: str, info: InstanceInfo | None = None,
                  done_dir: str | os.PathLike[str] | None = None,
                  failed_dir: str | os.PathLike[str] | None = None) -> Admission:
        """Store an instance (a Part 10 file's bytes) durably and journal it.

        Returns only once the instance and its row are on disk. Raises :class:`SpoolFullError`
        when the limits would be crossed (nothing is stored then). Logs the job at DEBUG: its
        producers (the node, STOW-RS) log what each association or request brought instead.
        """
        with self.space.reserve(len(data)):
            tmp = self._tmp_path()
            hasher = ContentHasher()
            hasher.update(data)
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                return self._admit(tmp, len(data), hasher.hexdigest(), info or read_instance_info(tmp),
                                   origin, name, done_dir, failed_dir, announce=logging.DEBUG)
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
        with open(path, "rb") as fin:
            return self.add_stream(fin, os.fstat(fin.fileno()).st_size, origin=origin, name=name,
                                   done_dir=done_dir, failed_dir=failed_dir)

    def add_stream(self, fin: BinaryIO, size: int, *, origin: str, name: str,
                   done_dir: str | os.PathLike[str] | None = None,
                   failed_dir: str | os.PathLike[str] | None = None,
                   verify: Callable[[], None] | None = None) -> Admission:
        """:meth:`add_file` from a file the caller opened (and closes): read to its end, `size` as opened.

        `verify` runs once the copy is on disk, before the journal row: what it raises abandons the
        admission (nothing stored) and reaches the caller (the source changed while it was read).
        """
        with self.space.reserve(size):
            tmp = self._tmp_path()
            hasher = ContentHasher()
            copied = 0
            try:
                with open(tmp, "wb") as fout:
                    while chunk := fin.read(files.CHUNK):
                        hasher.update(chunk)
                        fout.write(chunk)
                        copied += len(chunk)
                    fout.flush()
                    os.fsync(fout.fileno())
                info = read_instance_info(tmp)
                if verify is not None:
                    verify()
                return self._admit(tmp, copied, hasher.hexdigest(), info, origin, name, done_dir, failed_dir)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _tmp_path(self) -> Path:
        return self.root / "tmp" / f"{self._file_tag}-{uuid.uuid4().hex}.part"

    def _admit(self, tmp: Path, size: int, sha: str, info: InstanceInfo, origin: str, name: str,
               done_dir: str | os.PathLike[str] | None, failed_dir: str | os.PathLike[str] | None, *,
               announce: int = logging.INFO) -> Admission:
        arrival = Arrival(tmp, f"inputs/{self._file_tag}-{uuid.uuid4().hex}.dcm", size, sha, info, origin, name,
                          os.fspath(done_dir) if done_dir is not None else None,
                          os.fspath(failed_dir) if failed_dir is not None else None)
        admitted = self._commits.submit(arrival)  # durable once it returns (shared with concurrent arrivals)
        if admitted.state is JobState.SKIPPED:
            logger.log(announce, "job %d: %s, skipped: %s (SOPInstanceUID %s)", admitted.job_id, origin,
                       admitted.reason, info.sop_instance_uid)
            self.dispose(self.job(admitted.job_id))
        else:
            logger.log(announce, "job %d: received from %s (SOPInstanceUID %s, study %s, %d bytes)",
                       admitted.job_id, origin, info.sop_instance_uid, info.study_instance_uid, size)
            self.received_event.set()
        return Admission(admitted.job_id, admitted.state, admitted.duplicate_of)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(journal commits, instances admitted) since this spool was opened: how many shared a commit."""
        return self._commits.commits, self._commits.items

    # -- worker and delivery side ----------------------------------------------------------------

    def select(self, job_ids: Sequence[int]) -> None:
        """Selection let these received jobs through: the worker may claim them
        (:mod:`medblip_dicom.integrations.worker.series_hold` decides; this is its simplest verdict)."""
        self.journal.select(job_ids)
        if job_ids:
            self.received_event.set()

    def claim(self, limit: int) -> list[Job]:
        """Move up to `limit` selected received jobs (oldest first) to processing, owned by this instance."""
        return [self.job(i) for i in self.journal.claim(limit, self.owner)]

    def mark_reported(self, job_id: int, report_files: Sequence[Path], sr_sop_instance_uid: str) -> None:
        """The job's reports are durably in the spool: ready for delivery."""
        self.journal.mark_reported(job_id, [os.path.relpath(p, self.root) for p in report_files], sr_sop_instance_uid)
        self.reported_event.set()

    def claim_for_delivery(self, *, quiet_s: float = 0.0, now: float | None = None,
                           ignore_quiet: bool = False) -> list[list[Job]]:
        """Claim reported jobs due for delivery, grouped by study.

        With a quiet time, a study's reports are held until none of its instances arrived for
        `quiet_s` seconds and none is still waiting for the model; then they go together.
        """
        groups = self.journal.claim_for_delivery(self.owner, quiet_s=quiet_s, ignore_quiet=ignore_quiet,
                                                 now=time.time() if now is None else now)
        return [[self.job(i) for i in group] for group in groups]

    def next_delivery_due(self) -> float | None:
        """Earliest next_attempt_at among unclaimed reported jobs."""
        return self.journal.next_delivery_due()

    def defer_delivery(self, job_ids: Sequence[int], reason: str, *, initial_s: float, max_s: float) -> float:
        """Delivery failed for now: count an attempt and schedule the next with exponential backoff.

        Returns the delay until the next attempt.
        """
        delay = self.journal.defer(job_ids, reason, initial_s=initial_s, max_s=max_s)
        self.reported_event.set()
        return delay

    def release(self, job_ids: Sequence[int], *, count_attempt: bool = False, max_attempts: int | None = None,
                error_class: str | None = None, reason: str | None = None) -> Released:
        """Hand claimed jobs back: the one way a claim ends other than by a state change.

        Processing jobs go back to received (one more attempt counted with `count_attempt`); a job
        that thereby reaches `max_attempts` fails instead, with `error_class` and `reason`.
        Reported jobs being delivered lose the claim only (delivery attempts are counted by
        :meth:`defer_delivery`). Used when the model failed for a batch, at shutdown, and for the
        claims of processes that are gone (:mod:`.recovery`).
        """
        out = Released()
        for job_id, state, attempts in self.journal.release(job_ids, count_attempt=count_attempt,
                                                            max_attempts=max_attempts):
            {JobState.RECEIVED.value: out.requeued, JobState.REPORTED.value: out.unclaimed,
             JobState.FAILED.value: out.failed}[state].append(job_id)
        for job_id in out.failed:
            logger.error("job %d failed after %d attempts: %s", job_id, max_attempts, reason)
            self.finish(job_id, JobState.FAILED, reason, error_class=error_class)
        if out.requeued:
            self.received_event.set()
        if out.unclaimed:
            self.reported_event.set()
        return out

    def release_dead_claims(self) -> int:
        """Release the claims of owners that are gone (see :mod:`.recovery`); returns how many."""
        released = self.release(recovery.dead_claims(self.journal))
        if released.total:
            logger.warning("spool %s: released %d job(s) claimed by processes that are gone", self.root, released.total)
        return released.total

    def release_process(self, pid: int, *, max_attempts: int, error_class: str, reason: str) -> Released:
        """A process we watched died (a worker process that crashed): its processing jobs count one
        attempt each and go back to received, or fail with `reason` at `max_attempts`.

        Unlike a whole service killed from outside, a worker that dies while its service lives
        points at the jobs it held.
        """
        return self.release(recovery.claims_of_process(self.journal, pid), count_attempt=True, max_attempts=max_attempts,
                            error_class=error_class, reason=reason)

    def finish(self, job_id: int, state: JobState, reason: str | None = None, *, error_class: str | None = None,
               dicom_status: int | None = None) -> Job:
        """Put a job in a final state (delivered, failed, skipped) and move its input where it belongs."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state} is not a final state")
        self.journal.mark_final(job_id, state, error_class=error_class, reason=reason, dicom_status=dicom_status)
        self.dispose(self.job(job_id))
        return self.job(job_id)

    # -- recovery and disposal -----------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Make the spool consistent after a crash; call once at start. Returns what was done.

        - claims of owners that are gone are released (processing jobs go back to received and
          are captioned again; the SR's UID is deterministic, so nothing is reported twice);
        - final jobs whose input was not moved yet are moved now;
        - pending jobs whose input vanished fail with that reason;
        - files without a journal row and partial writes are removed (:func:`.recovery.remove_orphans`).
        """
        released = self.release(recovery.dead_claims(self.journal))
        done = {"requeued": len(released.requeued), "unclaimed": len(released.unclaimed), "disposed": 0,
                "missing": 0, "orphans": 0}
        for job in recovery.undisposed(self.journal):
            self.dispose(job)
            done["disposed"] += 1
        for job in recovery.inputs_missing(self.journal, self.root):
            self.finish(job.id, JobState.FAILED, "the input file vanished from the spool (removed by hand?)")
            done["missing"] += 1
        done["orphans"] = recovery.remove_orphans(self.journal, self.root)
        if any(done.values()):
            logger.warning("spool %s recovered: %s", self.root, ", ".join(f"{k} {v}" for k, v in done.items() if v))
        return done

    def dispose(self, job: Job) -> None:
        """Move a final job's input out of the spool; on an error retried at the next start."""
        if job.disposed:
            return
        try:
            final = files.dispose(self.root, job)
        except OSError as exc:
            logger.error("job %d: cannot move its input out of the spool (%s); will retry at the next start",
                         job.id, exc)
            return
        self.journal.mark_disposed(job.id, os.fspath(final) if final is not None else None)
