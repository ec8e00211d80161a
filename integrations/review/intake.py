"""Delivery hands every AI report to the review before it goes out (``[review] enabled``).

:class:`ReviewIntake` is called by :class:`~medblip_dicom.integrations.delivery.loop.Delivery` for each
group of claimed jobs. For each job that carries an AI report (not the review's own documents,
``origin = "review"``) it keeps the source and the report under ``SPOOL/review/items/`` (a hard
link: the bytes stay once on disk) and records a review item; the job then follows the spool's
retention rules as before, while the review copy stays until the report is signed or rejected.

- ``hold_until_signed = false``: the AI report is delivered at once, as without review.
- ``hold_until_signed = true``: nothing is sent for the AI report; its job ends ``skipped`` with
  the kind ``HeldForReview``, and the signed report (a job of its own) is what is delivered.

Intake is idempotent (a job deferred and retried is recorded once); a job whose files cannot be
kept is deferred like a folder that cannot be written, so no report escapes review.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from medblip_dicom.integrations.spool import Job, JobState, Spool

from medblip_dicom.integrations.review.store import ReviewStore

logger = logging.getLogger(__name__)

HELD_REASON = ("held for review ([review] hold_until_signed): the AI report is not sent; the signed report "
               "is delivered as a job of its own")


class ReviewIntake:
    """Record the AI reports of claimed jobs as review items (see the module docstring)."""

    def __init__(self, spool: Spool, *, hold_until_signed: bool = False, store: ReviewStore | None = None) -> None:
        self.spool = spool
        self.hold_until_signed = hold_until_signed
        self.store = store or ReviewStore(spool.root)

    def close(self) -> None:
        self.store.close()

    def intake(self, jobs: list[Job], defer: Callable[[Job, str], None]) -> list[Job]:
        """Record each job's AI report; returns the jobs that delivery should still send.

        `defer(job, reason)` is delivery's way to try a job again later (files not kept).
        """
        out: list[Job] = []
        for job in jobs:
            if job.origin == "review":
                out.append(job)
                continue
            try:
                kept = [self.store.add_item(job.id, self.spool.input_path(job), self.spool.root / rel)
                        for rel in job.reports if Path(rel).suffix == ".dcm"]
            except Exception as exc:  # noqa: BLE001 - a disk, a locked journal, an unreadable report: try later
                logger.error("job %d: cannot keep its report for review (%s: %s); delivery waits",
                             job.id, type(exc).__name__, exc)
                defer(job, f"cannot keep the report for review: {type(exc).__name__}: {exc}")
                continue
            if self.hold_until_signed and any(kept):
                self.spool.finish(job.id, JobState.SKIPPED, HELD_REASON, error_class="HeldForReview")
                logger.info("job %d: held for review, not delivered", job.id)
            else:
                out.append(job)
        return out
