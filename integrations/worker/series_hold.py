"""Selection in the services: the rules and one caption per series, applied to spooled jobs.

The same decisions as ``medblip caption`` (:mod:`medblip_dicom.selection`), but instances arrive
one at a time, so a series is decided once it is *quiet*: no instance of it arrived for
``series_quiet_s``. Until then its jobs are held (received, not selected). The worker runs
:meth:`SeriesHold.step` before each claim:

- a job whose header could not be read, or which names no series, is released as it is: the
  worker then fails it with the real reason;
- a job a rule skips is finished ``skipped`` (error class ``SelectionRule`` or ``Localizer``);
- with ``per_series = "each"`` every other job is released at once;
- a job of a series that already has its AI report (a representative that did not fail) is a
  *late instance*: skipped (``LateInstance``) with a reason naming the captioned one, because a
  PACS should get one AI report per series;
- once a series is quiet, its representative is released (with the note its SR carries) and every
  other held job of it is skipped (``NotRepresentative``), in one transaction.

The choice depends only on the set of instances, so a crash or a restart at any point ends with the
same single report: an undecided series is decided after the restart from the same jobs, and a
decided one stays decided.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict

from medblip_dicom.selection import InstanceFacts, SelectConfig, decide, not_representative_reason, representative
from medblip_dicom.selection import series_note as note_for

from medblip_dicom.integrations.spool import Job, JobState, Spool

logger = logging.getLogger(__name__)


class SeriesHold:
    """Holds spooled jobs until their series is decided, then releases what the worker captions
    (the rules of :mod:`medblip_dicom.selection`; see the module docstring)."""

    def __init__(self, spool: Spool, config: SelectConfig) -> None:
        self.spool = spool
        self.config = config
        #: Held jobs already through the rules, with their facts: a series of hundreds of slices is
        #: looked at again at every wake-up until it is quiet; its rows are not parsed every time.
        self._held: dict[int, InstanceFacts] = {}

    def step(self, now: float | None = None, *, complete: bool = False) -> float | None:
        """Decide what can be decided now.

        `complete` treats every held series as quiet (``medblip watch --once``: the inbox is all
        there is). Returns the seconds until the next held series becomes quiet, or None.
        """
        now = time.time() if now is None else now
        held: dict[str, list[tuple[Job, InstanceFacts]]] = defaultdict(list)
        release: list[int] = []
        waiting = self.spool.journal.unselected()
        self._held = {job.id: self._held[job.id] for job in waiting if job.id in self._held}
        for job in waiting:
            if job.id in self._held:
                held[self._held[job.id].series_instance_uid].append((job, self._held[job.id]))
                continue
            facts = self._facts(job)
            if facts is None or not facts.series_instance_uid:
                release.append(job.id)
                continue
            decision = decide(facts, self.config)
            if not decision.caption:
                kind = "Localizer" if decision.kind == "localizer" else "SelectionRule"
                logger.info("job %d: skipped, %s: %s", job.id, kind, decision.reason)
                self.spool.finish(job.id, JobState.SKIPPED, decision.reason, error_class=kind)
            elif self.config.each:
                release.append(job.id)
            else:
                self._held[job.id] = facts
                held[facts.series_instance_uid].append((job, facts))
        self.spool.select(release)
        next_due: float | None = None
        for series_uid, members in held.items():
            due = self._settle(series_uid, members, now, complete)
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        return next_due

    def _facts(self, job: Job) -> InstanceFacts | None:
        if job.facts:
            try:
                return InstanceFacts.from_dict(json.loads(job.facts))
            except (ValueError, TypeError):
                return None
        # A job admitted before selection existed: read its header now.
        from medblip_dicom.integrations.spool.files import read_instance_info

        info = read_instance_info(self.spool.input_path(job))
        return InstanceFacts.from_dict(info.facts) if info.facts else None

    def _settle(self, series_uid: str, members: list[tuple[Job, InstanceFacts]], now: float,
                complete: bool) -> float | None:
        """Decide one series if it is quiet (or late); else return the seconds until it is quiet."""
        captioned = self.spool.journal.captioned_for_series(series_uid)
        if captioned is not None:
            for job, _ in members:
                reason = (f"a late instance of series {series_uid}, which already has its AI report (instance "
                          f"{captioned.sop_instance_uid} captioned); one AI report per series")
                logger.info("job %d: skipped, LateInstance: %s", job.id, reason)
                self.spool.finish(job.id, JobState.SKIPPED, reason, error_class="LateInstance")
            return None
        last = max(job.received_at for job, _ in members)
        wait = last + self.config.series_quiet_s - now
        if wait > 0 and not complete:
            return wait
        chosen = representative([f for _, f in members]).sop_instance_uid
        # Every job of the chosen instance is captioned (a corrected re-send is the same instance).
        reps = [job.id for job, f in members if f.sop_instance_uid == chosen]
        reason = not_representative_reason(series_uid, chosen)
        others = [(job.id, reason) for job, f in members if f.sop_instance_uid != chosen]
        size = len({f.sop_instance_uid for _, f in members})
        self.spool.journal.decide_series(reps, note_for(series_uid, size), others)
        for job_id, _ in others:
            self.spool.dispose(self.spool.job(job_id))
        logger.info("series %s: %d instance(s), SOPInstanceUID %s (job %s) is its representative", series_uid,
                    size, chosen, ", ".join(map(str, reps)))
        self.spool.received_event.set()
        return None
