"""What happened to one pulled study, and the captioning step both pulls share.

:class:`StudyPull` is the per-instance account a pull prints: found, decided from the query answers
without retrieving (``skipped``), retrieved, captioned, failed, stored. :func:`sources_to_caption`
turns what arrived into the pipeline's sources (a representative carries its series note), and
:func:`caption_into` runs them through the pipeline and files each outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medblip_dicom.integrations.pull.choose import RetrievalPlan

logger = logging.getLogger(__name__)


@dataclass
class StudyPull:
    """What happened to one study, instance by instance (SOPInstanceUIDs; reasons beside them)."""

    study_uid: str
    found: int = 0
    retrieved: list[str] = field(default_factory=list)
    not_retrieved: list[str] = field(default_factory=list)  # the archive went away first (server_error)
    captioned: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # retrieved, with the archive's warning
    moved: list[str] = field(default_factory=list)  # sent by C-MOVE to another node, which captions them
    stored: list[str] = field(default_factory=list)
    not_stored: list[tuple[str, str]] = field(default_factory=list)
    server_error: str = ""

    @property
    def complete(self) -> bool:
        """True when every instance found was retrieved, none failed, and every SR went where asked."""
        return not (self.not_retrieved or self.failed or self.not_stored or self.server_error)

    def counts(self) -> dict[str, int]:
        """The totals a pull prints, in order."""
        return {"found": self.found, "retrieved": len(self.retrieved), "captioned": len(self.captioned),
                "skipped": len(self.skipped), "failed": len(self.failed), "stored": len(self.stored),
                "not retrieved": len(self.not_retrieved), "not stored": len(self.not_stored),
                "moved": len(self.moved)}


def sources_to_caption(plan: RetrievalPlan, received: dict[str, Path], result: StudyPull) -> list[Any]:
    """The pipeline's sources for what arrived, in the plan's order.

    A series retrieved whole to be chosen after retrieval is captioned only when every member
    arrived: its representative among part of it would be another instance, with another count.
    Its members that did arrive are then failed with that reason (a rerun retrieves them again).
    """
    from medblip_dicom.pipeline import Annotated

    incomplete = {w.series_uid for w in plan.wanted if w.series_uid in plan.whole_series and w.sop_uid not in received}
    sources: list[Any] = []
    for wanted in plan.wanted:
        path = received.get(wanted.sop_uid)
        if path is None:
            continue
        if wanted.series_uid in incomplete:
            missing = sum(1 for w in plan.wanted_in(wanted.series_uid) if w.sop_uid not in received)
            result.failed.append((wanted.sop_uid, f"not captioned: {missing} instance(s) of series {wanted.series_uid} "
                                  "were not retrieved, and its representative is chosen among all of them"))
            continue
        sources.append(Annotated(path, wanted.note) if wanted.note else path)
    return sources


def caption_into(result: StudyPull, caption: Callable[[list[Any]], Iterator[Any]], sources: list[Any]) -> list[Any]:
    """Caption `sources` (files named ``<SOPInstanceUID>.dcm``, or Annotated ones); file each
    outcome in `result`; return the :class:`~medblip_dicom.pipeline.CaptionResult` of each report."""
    from medblip_dicom.api import CaptionFailure, CaptionSkipped
    from medblip_dicom.errors import NotAnImageError

    reports = []
    for outcome in caption(sources) if sources else ():
        name = Path(outcome.source).stem
        if isinstance(outcome, CaptionSkipped):
            result.skipped.append((name, outcome.reason))
        elif isinstance(outcome, CaptionFailure) and isinstance(outcome.error, NotAnImageError):
            result.skipped.append((name, str(outcome.error)))  # a presentation state, a KO ...
        elif isinstance(outcome, CaptionFailure):
            result.failed.append((name, str(outcome.error)))
        else:
            result.captioned.append(outcome.sop_instance_uid)
            reports.append(outcome)
    return reports
