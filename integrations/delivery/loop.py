"""Delivery: hand reported jobs to the sinks, then close them.

Sinks, in order: the output folder (atomic copy, idempotent) and the destination (a Storage SCU,
:mod:`medblip_dicom.integrations.delivery.sinks.dicom`, and/or a STOW-RS client, :mod:`.sinks.dicomweb`,
with the same ``send``). A job is ``delivered`` once every sink has it. While
the destination is down or answers "out of resources", the job stays ``reported`` and is tried
again with exponential backoff (``retry_initial_s`` doubling up to ``retry_max_s``). A permanent
rejection ends the job in ``failed`` with the DICOM status; it is never retried.

With a study quiet time, reports of one study are held until the study had no new instance for
that long, then go out together over one association.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from medblip_dicom.fileio import atomic_copy, remove_stale_temp_files

from medblip_dicom.integrations.delivery.sinks.dicom import DestinationUnavailable, ForwardClient
from medblip_dicom.integrations.spool import Job, JobState, Spool
from medblip_dicom.integrations.ops.telemetry import Telemetry

logger = logging.getLogger(__name__)


class Delivery:
    """Deliver reported jobs to a folder and/or a destination. Call :meth:`run` in a thread."""

    def __init__(self, spool: Spool, *, out_dir: Path | None = None, forward: ForwardClient | Any | None = None,
                 study_quiet_s: float = 0.0, retry_initial_s: float = 2.0, retry_max_s: float = 300.0,
                 telemetry: Telemetry | None = None, review: Any | None = None) -> None:
        if out_dir is None and forward is None:
            raise ValueError("delivery needs a sink: an output folder or a destination")
        self.spool = spool
        self.out_dir = out_dir
        self.forward = forward
        self.study_quiet_s = study_quiet_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.telemetry = telemetry or Telemetry()
        #: ``[review] enabled``: a :class:`~.review.intake.ReviewIntake` that sees every AI report first.
        self.review = review
        self.delivered_count = 0
        #: The destination's state at the last try: None before any (or without one), else whether
        #: an association could be made, and why not (for /readyz).
        self.destination_reached: bool | None = None
        self.destination_error = ""

    def recover(self) -> int:
        """At start: remove the temporary files a process killed mid-copy left in the output folder
        (a reader never sees them under a final name, but they must not pile up). Returns how many."""
        if self.out_dir is None:
            return 0
        removed = remove_stale_temp_files(self.out_dir)
        if removed:
            logger.warning("removed %d temporary file(s) that an interrupted copy left in %s", removed, self.out_dir)
        return removed

    def run(self, stop: threading.Event, *, poll_s: float = 0.5) -> None:
        """Deliver until `stop` is set."""
        while not stop.is_set():
            self.spool.reported_event.clear()
            groups = self.spool.claim_for_delivery(quiet_s=self.study_quiet_s)
            if not groups:
                due = self.spool.next_delivery_due()
                wait = poll_s if due is None else min(poll_s, max(0.0, due - time.time()))
                self.spool.reported_event.wait(max(wait, 0.01))
                continue
            for i, group in enumerate(groups):
                rest = [j.id for g in groups[i:] for j in g]
                if stop.is_set():
                    self.spool.release(rest)
                    break
                if not self.deliver(group):
                    # The destination is down: the other groups of this round wait with it.
                    later = [j.id for g in groups[i + 1:] for j in g]
                    if later:
                        self.spool.defer_delivery(later, self.spool.job(group[0].id).reason or "destination down",
                                                  initial_s=self.retry_initial_s, max_s=self.retry_max_s)
                    break

    def deliver_all_once(self) -> None:
        """Try each reported job once, ignoring quiet times and backoff (for ``--once``)."""
        for group in self.spool.claim_for_delivery(ignore_quiet=True, now=float("inf")):
            self.deliver(group)

    def deliver(self, jobs: list[Job]) -> bool:
        """Deliver one group of claimed jobs (one study) to every sink.

        Returns False when the destination could not be reached (the jobs were deferred).
        """
        started = time.perf_counter()
        if self.review is not None:
            jobs = self.review.intake(jobs, lambda job, reason: self.spool.defer_delivery(
                [job.id], reason, initial_s=self.retry_initial_s, max_s=self.retry_max_s))
        if self.out_dir is not None:
            for job in list(jobs):
                try:
                    for rel in job.reports:
                        src = self.spool.root / rel
                        atomic_copy(src, self.out_dir / src.name)
                except OSError as exc:
                    delay = self.spool.defer_delivery([job.id], f"cannot write to {self.out_dir}: {exc}",
                                                      initial_s=self.retry_initial_s, max_s=self.retry_max_s)
                    logger.error("job %d: cannot write its report to the output folder (%s); retry in %.1f s",
                                 job.id, exc, delay)
                    jobs.remove(job)
        if not jobs:
            return True
        if self.forward is None:
            for job in jobs:
                self._delivered(job)
            return True
        files = [(job, self.spool.root / rel) for job in jobs for rel in job.reports]
        try:
            outcomes = self.forward.send([path for _, path in files])
        except DestinationUnavailable as exc:
            self.destination_reached, self.destination_error = False, str(exc)
            # A STOW-RS server's Retry-After (if any) is the shortest wait; backoff goes on from there.
            after = getattr(exc, "retry_after_s", None) or 0.0
            delay = self.spool.defer_delivery([j.id for j in jobs], str(exc),
                                              initial_s=max(self.retry_initial_s, after),
                                              max_s=max(self.retry_max_s, after))
            logger.warning("%s; %d report(s) of study %s wait, next try in %.1f s",
                           exc, len(jobs), jobs[0].study_instance_uid, delay)
            return False
        self.destination_reached, self.destination_error = True, ""
        destination = str(self.forward.destination)
        self.telemetry.reports_sent([o.path for o in outcomes if o.delivered], destination=destination, ok=True,
                                    detail=f"sent by {getattr(self.forward, 'protocol', 'C-STORE')}")
        self.telemetry.reports_sent([o.path for o in outcomes if o.permanent], destination=destination, ok=False,
                                    detail="refused by the destination")
        by_job: dict[int, list] = {}
        for (job, _), outcome in zip(files, outcomes, strict=True):
            by_job.setdefault(job.id, []).append(outcome)
        for job in jobs:
            results = by_job.get(job.id, [])
            refused = [o for o in results if o.permanent]
            waiting = [o for o in results if not o.delivered and not o.permanent]
            if refused:
                first = refused[0]
                reason = f"{self.forward.destination} refused {first.path.name} with status {first.message}"
                logger.error("job %d: failed, DestinationRejected: %s", job.id, reason)
                self.spool.finish(job.id, JobState.FAILED, reason, error_class="DestinationRejected",
                                  dicom_status=first.status)
            elif waiting:
                delay = self.spool.defer_delivery([job.id], f"destination answered {waiting[0].message}",
                                                  initial_s=self.retry_initial_s, max_s=self.retry_max_s)
                logger.warning("job %d: destination answered %s; retry in %.1f s", job.id, waiting[0].message, delay)
            else:
                self._delivered(job)
        logger.info("delivered a group of %d report(s) of study %s in %.3f s", len(jobs),
                    jobs[0].study_instance_uid, time.perf_counter() - started)
        return True

    def _delivered(self, job: Job) -> None:
        self.spool.finish(job.id, JobState.DELIVERED)
        self.delivered_count += 1
        logger.info("job %d: delivered SR %s (SOPInstanceUID %s)", job.id, job.sr_sop_instance_uid,
                    job.sop_instance_uid)
