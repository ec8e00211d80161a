"""Delivery: hand reported jobs to every sink, then close them.

The sinks (:mod:`.sinks`, each a :class:`~.sinks.base.Sink`) are tried in order: the output folder,
the DICOM destination (C-STORE), the DICOMweb one (STOW-RS), the RIS (HL7 v2 over MLLP), the FHIR
server. A job is ``delivered`` once every sink has each of its files; which sink already has which
file is kept in the :class:`~.ledger.Ledger`, so a retry goes only to the sinks that lack it.

- A sink that cannot be reached (:class:`~.sinks.base.DestinationUnavailable`) is left alone for the
  rest of the round: the reports it lacks wait, the other sinks still get theirs now.
- A transient answer (out of resources, an HL7 AE, a failed copy) makes the job wait too.
- Waiting jobs stay ``reported`` and are tried again with exponential backoff (``retry_initial_s``
  doubling up to ``retry_max_s``; a server's Retry-After is the shortest wait).
- A permanent refusal by any sink ends the job in ``failed`` with that sink's reason (and the DICOM
  status, where there is one); it is never retried.

:func:`~.sinks.base.verdict` is the one rule that turns the sinks' outcomes into the job's fate.
With a study quiet time, reports of one study are held until the study had no new instance for
that long, then go out together (over one association, one request, one MLLP connection).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip_dicom.integrations.delivery.ledger import Ledger
from medblip_dicom.integrations.delivery.sinks.base import (
    DestinationUnavailable, Sink, StoreOutcome, rejected_class, send_guarded, sink_name, verdict,
)
from medblip_dicom.integrations.delivery.sinks.folder import FolderSink
from medblip_dicom.integrations.spool import Job, JobState, Spool
from medblip_dicom.integrations.ops.telemetry import Telemetry

logger = logging.getLogger(__name__)


class Delivery:
    """Deliver reported jobs to the sinks. Call :meth:`run` in a thread.

    `sinks` in the order they are tried; `out_dir` (a :class:`~.sinks.folder.FolderSink`, first)
    and `forward` (one more sink, after it) are shorthands for the two most common ones.
    """

    def __init__(self, spool: Spool, *, out_dir: Path | None = None, forward: Sink | Any | None = None,
                 sinks: Sequence[Sink] = (), study_quiet_s: float = 0.0, retry_initial_s: float = 2.0,
                 retry_max_s: float = 300.0, telemetry: Telemetry | None = None, review: Any | None = None) -> None:
        self.sinks: list[Sink] = [*([FolderSink(out_dir)] if out_dir is not None else []),
                                  *([forward] if forward is not None else []), *sinks]
        if not self.sinks:
            raise ValueError("delivery needs a sink: an output folder or a destination")
        self.spool = spool
        self.out_dir = out_dir
        #: The first sink beyond the folder (None when reports only go to a folder): readiness asks it.
        self.forward = next((s for s in self.sinks if s.kind != "folder"), None)
        self.study_quiet_s = study_quiet_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.telemetry = telemetry or Telemetry()
        #: ``[review] enabled``: a :class:`~.review.intake.ReviewIntake` that sees every AI report first.
        self.review = review
        self.ledger = Ledger(spool.root)
        self.delivered_count = 0
        #: Each destination's state at its last try: sink name -> the reason it was not reached, or "".
        self.reached: dict[str, str] = {}

    @property
    def destination_reached(self) -> bool | None:
        """None before any destination was tried (or without one), else whether each was reached at its last try."""
        if not self.reached:
            return None
        return not any(self.reached.values())

    @property
    def destination_error(self) -> str:
        """Why the destinations that were not reached at their last try were not (for /readyz)."""
        return "; ".join(why for why in self.reached.values() if why)

    def recover(self) -> int:
        """At start: remove what an interrupted copy left in the output folder, and the ledger rows of
        jobs that ended while a process died. Returns how many temporary files went."""
        removed = sum(s.recover() for s in self.sinks if isinstance(s, FolderSink))
        pending = [j.id for j in self.spool.jobs(JobState.REPORTED)]
        self.ledger.prune(pending)
        return removed

    def close(self) -> None:
        self.ledger.close()

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
            down: dict[str, DestinationUnavailable] = {}  # sinks found unreachable in this round
            for i, group in enumerate(groups):
                if stop.is_set():
                    self.spool.release([j.id for g in groups[i:] for j in g])
                    break
                self.deliver(group, down=down)

    def deliver_all_once(self) -> None:
        """Try each reported job once, ignoring quiet times and backoff (for ``--once``)."""
        down: dict[str, DestinationUnavailable] = {}
        for group in self.spool.claim_for_delivery(ignore_quiet=True, now=float("inf")):
            self.deliver(group, down=down)

    def deliver(self, jobs: list[Job], *, down: dict[str, DestinationUnavailable] | None = None) -> bool:
        """Deliver one group of claimed jobs (one study) to every sink that lacks their files.

        `down` holds the sinks found unreachable earlier in this round (not tried again; grows
        here). Returns False when a sink could not be reached (its reports were deferred).
        """
        started = time.perf_counter()
        down = {} if down is None else down
        if self.review is not None:
            jobs = self.review.intake(jobs, lambda job, reason: self._defer(job, reason))
        if not jobs:
            return True
        results: dict[int, list[tuple[Sink, StoreOutcome]]] = {job.id: [] for job in jobs}
        unreached: dict[int, DestinationUnavailable] = {}
        for sink in self.sinks:
            name = sink_name(sink)
            taken = self.ledger.has(name, [rel for job in jobs for rel in job.reports])
            todo = [(job, rel) for job in jobs for rel in job.reports
                    if rel not in taken and not _refused(results[job.id])]
            if not todo:
                continue
            if name not in down:
                try:
                    outcomes = send_guarded(sink, [self.spool.root / rel for _, rel in todo])
                except DestinationUnavailable as exc:
                    down[name] = exc
                    self.reached[name] = str(exc)
                    logger.warning("%s; %d report(s) of study %s wait", exc, len(todo), jobs[0].study_instance_uid)
                else:
                    self._taken(sink, name, todo, outcomes, results)
                    continue
            for job, _ in todo:
                unreached.setdefault(job.id, down[name])
        for job in jobs:
            self._settle(job, results[job.id], unreached.get(job.id))
        logger.info("delivered a group of %d report(s) of study %s in %.3f s", len(jobs),
                    jobs[0].study_instance_uid, time.perf_counter() - started)
        return not unreached

    def _taken(self, sink: Sink, name: str, todo: list[tuple[Job, str]], outcomes: list[StoreOutcome],
               results: dict[int, list[tuple[Sink, StoreOutcome]]]) -> None:
        """Record what `sink` answered: the ledger, the audit trail and each job's results."""
        if sink.kind != "folder":
            self.reached[name] = ""
        self.ledger.record(name, [(job.id, rel) for (job, rel), o in zip(todo, outcomes, strict=True) if o.delivered])
        if sink.kind != "folder":
            destination = str(sink.destination)
            self.telemetry.reports_sent([o.path for o in outcomes if o.delivered], destination=destination, ok=True,
                                        detail=f"sent by {sink.protocol}")
            self.telemetry.reports_sent([o.path for o in outcomes if o.permanent and not o.delivered],
                                        destination=destination, ok=False, detail="refused by the destination")
        for (job, _), outcome in zip(todo, outcomes, strict=True):
            results[job.id].append((sink, outcome))

    def _settle(self, job: Job, results: list[tuple[Sink, StoreOutcome]],
                unreached: DestinationUnavailable | None) -> None:
        """One job's fate from its sinks' outcomes (:func:`~.sinks.base.verdict`)."""
        decided = verdict(results)
        if decided.state == "refused":
            assert decided.outcome is not None and decided.sink is not None
            sink, first = decided.sink, decided.outcome
            reason = f"{sink.kind} destination {sink.destination} refused {first.path.name}: {first.message}"
            logger.error("job %d: failed, %s: %s", job.id, rejected_class(sink), reason)
            self.spool.finish(job.id, JobState.FAILED, reason, error_class=rejected_class(sink),
                              dicom_status=first.status if sink.kind in ("dicom", "dicomweb") else None)
            self.ledger.forget([job.id])
        elif unreached is not None:
            self._defer(job, str(unreached), getattr(unreached, "retry_after_s", None) or 0.0)
        elif decided.state == "waiting":
            assert decided.outcome is not None and decided.sink is not None
            self._defer(job, f"{decided.sink.kind} destination {decided.sink.destination} answered "
                             f"{decided.outcome.message}")
        else:
            self._delivered(job)

    def _defer(self, job: Job, reason: str, after: float = 0.0) -> None:
        delay = self.spool.defer_delivery([job.id], reason, initial_s=max(self.retry_initial_s, after),
                                          max_s=max(self.retry_max_s, after))
        logger.warning("job %d: %s; retry in %.1f s", job.id, reason, delay)

    def _delivered(self, job: Job) -> None:
        self.spool.finish(job.id, JobState.DELIVERED)
        self.ledger.forget([job.id])
        self.delivered_count += 1
        logger.info("job %d: delivered SR %s (SOPInstanceUID %s)", job.id, job.sr_sop_instance_uid,
                    job.sop_instance_uid)


def _refused(results: list[tuple[Sink, StoreOutcome]]) -> bool:
    return any(o.permanent and not o.delivered for _, o in results)
