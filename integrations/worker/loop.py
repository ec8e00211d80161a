"""The worker: takes batches of received jobs from the spool, captions them, writes their reports.

Before each claim it lets selection decide (:mod:`.series_hold`): rules skip what should not be
captioned, and by default one instance per series (its representative) is captioned once the
series is quiet.

One model, loaded once, serves every job. A batch is taken when ``batch_size`` jobs wait or when
the oldest waiting job has waited ``max_wait_s``, so the model gets full batches under load and a
lone instance is not held back long. Each job ends ``reported`` (SR written durably into the
spool, ready for delivery), ``skipped`` (SRs and other non-images: never captioned, the loop
guard; duplicates, which admission finds, or the pipeline within a batch) or ``failed`` (its input
goes to ``failed/`` with a reason file: error class and message). A reason never quotes a value of
the data set: a library's words inside it are redacted (:mod:`medblip_dicom.logsafety`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from medblip_dicom.api import CaptionFailure, CaptionResult, CaptionSkipped, caption_dicoms
from medblip_dicom.captioner import Captioner
from medblip_dicom.errors import NotAnImageError, SourceError
from medblip_dicom.fileio import atomic_write_bytes
from medblip_dicom.logsafety import redact
from medblip_dicom.pipeline import Annotated
from medblip_dicom.report import write_report
from medblip_dicom.selection import SelectConfig

from medblip_dicom.integrations.worker.series_hold import SeriesHold
from medblip_dicom.integrations.spool import Job, JobState, Spool

logger = logging.getLogger(__name__)

#: A job whose batch failed for reasons outside the job (model error, disk error) is retried this often.
MAX_ATTEMPTS = 3


class Worker:
    """Caption spooled jobs in batches. Call :meth:`run` in a thread with a stop event."""

    def __init__(self, spool: Spool, captioner: Captioner, *, batch_size: int = 8, max_wait_s: float = 1.0,
                 prepare_workers: int = 2, secondary_capture: bool = False, frame: int | None = None,
                 select: SelectConfig | None = None, pdf: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spool = spool
        self.captioner = captioner
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.prepare_workers = prepare_workers
        self.secondary_capture = secondary_capture
        self.pdf = pdf
        if pdf:  # reportlab and the fonts are checked at start, not on the first report
            from medblip_dicom.pdf_fonts import register_fonts

            register_fonts()
        self.frame = frame
        self.series_hold = SeriesHold(spool, select if select is not None else SelectConfig())
        #: Sizes of the most recent batches (for logs, status and tests).
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self.idle = threading.Event()
        self._batch: Sequence[Job] = ()  # the batch being recorded: its inputs' paths are named by job number

    # -- loop ------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, poll_s: float = 0.5, reclaim_every_s: float = 5.0) -> None:
        """Process batches until `stop` is set (the batch in progress is finished first).

        Every `reclaim_every_s` it also takes back the claims of processes that are gone
        (:meth:`Spool.release_dead_claims`), so a crashed peer's jobs do not wait for a restart.
        """
        logger.info("worker started (batch size %d, max wait %.2f s, %s)", self.batch_size, self.max_wait_s,
                    "one caption per instance" if self.series_hold.config.each else
                    f"one caption per series, quiet {self.series_hold.config.series_quiet_s:g} s")
        next_reclaim = time.monotonic() + reclaim_every_s
        while not stop.is_set():
            if time.monotonic() >= next_reclaim:
                self.spool.release_dead_claims()
                next_reclaim = time.monotonic() + reclaim_every_s
            self.spool.received_event.clear()
            series_due = self.series_hold.step()
            waiting, oldest = self.spool.claimable()
            wait = poll_s if series_due is None else min(poll_s, max(series_due, 0.01))
            if waiting == 0:
                self.idle.set()
                self.spool.received_event.wait(wait)
                continue
            if waiting < self.batch_size:
                due_in = (oldest or 0.0) + self.max_wait_s - time.time()
                if due_in > 0:
                    self.spool.received_event.wait(min(due_in, wait))
                    continue
            self.idle.clear()
            jobs = self.spool.claim(self.batch_size)
            if jobs:
                self.process(jobs)
        logger.info("worker stopped")

    def process_available(self) -> int:
        """Process every received job now, in full batches (for ``--once``: every held series counts
        as complete); returns how many were captioned or failed."""
        total = 0
        self.series_hold.step(complete=True)
        while jobs := self.spool.claim(self.batch_size):
            self.process(jobs)
            total += len(jobs)
        return total

    # -- one batch -------------------------------------------------------------------------------

    def process(self, jobs: Sequence[Job]) -> None:
        """Caption claimed (processing) jobs as one model batch and record each outcome."""
        started = time.perf_counter()
        sources = [Annotated(self.spool.input_path(job), job.note) if job.note else self.spool.input_path(job)
                   for job in jobs]
        try:
            outcomes = list(caption_dicoms(sources, model=self.captioner, output_dir=None, frame=self.frame,
                                           batch_size=len(jobs), workers=self.prepare_workers))
        except Exception as exc:  # noqa: BLE001 - a model or runtime failure outside any one input
            if len(jobs) > 1:
                logger.warning("batch of %d failed (%s: %s); retrying its jobs one by one",
                               len(jobs), type(exc).__name__, exc)
                for job in jobs:
                    self.process([job])
                return
            self._retry_or_fail(jobs[0], type(exc).__name__, str(exc))
            return
        self.batch_sizes.append(len(jobs))
        self._batch = jobs
        for job, outcome in zip(jobs, outcomes, strict=True):
            try:
                self._record(job, outcome)
            except OSError as exc:
                self._retry_or_fail(job, type(exc).__name__, f"cannot write the report into the spool ({exc})")
            except Exception as exc:  # noqa: BLE001 - one job's error must not stop the others
                logger.exception("job %d: unexpected error while recording its outcome", job.id)
                self._retry_or_fail(job, type(exc).__name__, str(exc))
        seconds = time.perf_counter() - started
        self.spool.journal.record_batch(len(jobs), seconds)
        logger.info("batch of %d captioned in %.2f s", len(jobs), seconds)

    def _retry_or_fail(self, job: Job, error_class: str, message: str) -> None:
        """The job's batch failed for a reason outside the job: try again, up to MAX_ATTEMPTS in all."""
        reason = self._scrub(message, job)
        released = self.spool.release([job.id], count_attempt=True, max_attempts=MAX_ATTEMPTS,
                                      error_class=error_class, reason=reason)
        if released.requeued:
            logger.warning("job %d: attempt failed (%s: %s); will retry", job.id, error_class, reason)

    def _scrub(self, message: str, job: Job) -> str:
        """Replace the spool path of the inputs (the labels in core messages) by the job numbers, and
        withhold any value a library's words in `message` quote (the reason goes to logs and files)."""
        for other in (job, *(j for j in self._batch if j.id != job.id)):
            message = message.replace(str(self.spool.input_path(other)), f"job {other.id}")
        return redact(message)

    def _record(self, job: Job, outcome: CaptionResult | CaptionFailure | CaptionSkipped) -> None:
        if isinstance(outcome, CaptionSkipped):  # a later instance of a SOPInstanceUID in this batch
            reason = self._scrub(outcome.reason, job)
            logger.info("job %d: skipped (SOPInstanceUID %s): %s: %s", job.id, job.sop_instance_uid, outcome.kind,
                        reason)
            self.spool.finish(job.id, JobState.SKIPPED, reason, error_class=outcome.kind)
            return
        if isinstance(outcome, CaptionFailure):
            error = outcome.error
            # A source's error keeps its reason apart from its label (the spool path): record the reason.
            reason = self._scrub(error.reason if isinstance(error, SourceError) else str(error), job)
            state = JobState.SKIPPED if isinstance(error, NotAnImageError) else JobState.FAILED
            logger.log(logging.INFO if state is JobState.SKIPPED else logging.WARNING,
                       "job %d: %s (SOPInstanceUID %s): %s: %s", job.id, state.value, job.sop_instance_uid,
                       type(error).__name__, reason)
            self.spool.finish(job.id, state, reason, error_class=type(error).__name__)
            return
        folder = self.spool.report_dir(job.id)
        files = [write_report(outcome.sr, folder)]
        if self.secondary_capture:
            sc_path = self._secondary_capture(job, outcome, folder)
            if sc_path is not None:
                files.append(sc_path)
        if self.pdf:
            pdf_path = self._pdf(job, outcome, folder)
            if pdf_path is not None:
                files.append(pdf_path)
        self.spool.mark_reported(job.id, files, outcome.sr_sop_instance_uid)
        t = outcome.timings
        logger.info("job %d: reported SR %s for SOPInstanceUID %s (read %.3f s, pixels %.3f s, caption %.3f s)",
                    job.id, outcome.sr_sop_instance_uid, outcome.sop_instance_uid,
                    t.get("read_s", 0.0), t.get("pixels_s", 0.0), t.get("caption_s", 0.0))

    def _secondary_capture(self, job: Job, outcome: CaptionResult, folder: Path) -> Path | None:
        """Write the Secondary Capture (the image with its caption); a failure is logged and the SR goes alone."""
        from io import BytesIO

        from medblip_dicom.errors import MedblipError
        from medblip_dicom.pixels import dataset_to_image
        from medblip_dicom.reading import read_image

        from medblip_dicom.secondary_capture import build_secondary_capture

        try:
            found = read_image(self.spool.input_path(job))
            image = dataset_to_image(found.dataset, outcome.frame_index, label=f"job {job.id}")
            caption = outcome.caption
            sc = build_secondary_capture(found.dataset, image, caption, outcome.sr, self.captioner.identity)
            buf = BytesIO()
            sc.save_as(buf, enforce_file_format=True)
            target = folder / f"{sc.SOPInstanceUID}.dcm"
            atomic_write_bytes(target, buf.getvalue())
            return target
        except (MedblipError, ValueError, TypeError, AttributeError, KeyError) as exc:
            logger.warning("job %d: no Secondary Capture (%s: %s); the SR goes alone", job.id, type(exc).__name__,
                           self._scrub(str(exc), job))
            return None

    def _pdf(self, job: Job, outcome: CaptionResult, folder: Path) -> Path | None:
        """Write the Encapsulated PDF of the report (``[output] pdf``); a failure is logged and the SR
        goes without it."""
        from medblip_dicom.errors import MedblipError
        from medblip_dicom.pdf_report import build_pdf_report
        from medblip_dicom.pixels import dataset_to_image
        from medblip_dicom.reading import read_image

        try:
            found = read_image(self.spool.input_path(job))
            image = dataset_to_image(found.dataset, outcome.frame_index, label=f"job {job.id}")
            return write_report(build_pdf_report(outcome.sr, image), folder)
        except (MedblipError, ValueError, TypeError, AttributeError, KeyError) as exc:
            logger.warning("job %d: no PDF report (%s: %s); the SR goes without it", job.id, type(exc).__name__,
                           self._scrub(str(exc), job))
            return None
