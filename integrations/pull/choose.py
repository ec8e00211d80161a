"""What a pull retrieves: the selection rules and the one-caption-per-series choice, run on the
archive's query answers (C-FIND or QIDO-RS) before anything is retrieved.

A 400-slice CT series costs one retrieved instance instead of 400 when the archive answers what
the choice needs: the series-level attributes the rules read (Modality, BodyPartExamined,
SeriesDescription) and, at IMAGE level, SOPClassUID, ImageType, Rows, Columns, InstanceNumber,
ImagePositionPatient and ImageOrientationPatient. The decision made here is the one
:mod:`medblip_dicom.selection` would make on the retrieved headers, or none at all:

- A value the archive does not answer is *unknown*, never empty. An archive that leaves a key out
  (dcmtk's dcmqrscp answers few keys at IMAGE level), or answers it empty for every instance (it
  may only echo the query), has not said the value is empty. An empty answer counts as empty only
  when the same query answered that key with a value for another instance (so the archive knows it).
- A rule whose outcome depends on an unknown value leaves the instance undecided: it is retrieved,
  and the selection decides on its header as it always does.
- A series is reduced to its representative only when the rules decided every instance of it and
  the archive answered what :func:`~medblip_dicom.selection.representative` reads for every one
  (position and orientation, and InstanceNumber where a position is absent). Otherwise the series
  is retrieved whole, less the instances a rule skips, and chosen after retrieval: the same choice.

The representative's SR carries the same series note (``series_note``: the instance count) as if
the whole series had been retrieved, so its UIDs are the same either way and a rerun by the other
path creates nothing new. Reports (SR, KO and PR series or SOP classes) are never retrieved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from medblip_dicom.selection import (
    Decision, InstanceFacts, Rule, SelectConfig, decide, not_representative_reason, representative, series_note,
)

#: The series-level keys a pull asks for (C-FIND at SERIES level; QIDO-RS series search).
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined", "SeriesNumber")
#: The IMAGE-level keys a pull asks for: what the rules and the choice of a representative read.
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ImageType", "ImagePositionPatient",
                 "ImageOrientationPatient", "Rows", "Columns", "NumberOfFrames")
#: Each rule criterion and the attribute it reads.
CRITERION_KEYWORDS = {"modality": "Modality", "sop_class": "SOPClassUID", "body_part": "BodyPartExamined",
                      "series_description": "SeriesDescription", "image_type": "ImageType",
                      "min_rows": "Rows", "min_columns": "Columns"}
#: Modalities of documents, not images: never retrieved for captioning (our own reports among them).
REPORT_MODALITIES = frozenset({"SR", "KO", "PR"})
#: SOP classes of Structured Reports (1.2.840.10008.5.1.4.1.1.88.x) and Key Object Selection.
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _has_value(ds: Any, keyword: str) -> bool:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a value that cannot be read is not an answer
        return False
    if value is None:
        return False
    if isinstance(value, (str, bytes)):
        return bool(str(value).strip("\x00 "))
    try:
        return len(value) > 0
    except TypeError:
        return True


@dataclass(frozen=True)
class Answer:
    """One instance as the archive described it: its facts, and which attributes it answered."""

    facts: InstanceFacts
    answered: frozenset[str] = frozenset()  # keywords answered with a value

    @classmethod
    def from_dataset(cls, ds: Any) -> Answer:
        """From a C-FIND identifier (or a QIDO-RS result read with ``Dataset.from_json``), merged with
        its series' answer."""
        keywords = set(CRITERION_KEYWORDS.values()) | set(INSTANCE_KEYS) | set(SERIES_KEYS)
        return cls(InstanceFacts.from_dataset(ds), frozenset(k for k in keywords if _has_value(ds, k)))

    @property
    def sop_instance_uid(self) -> str:
        return self.facts.sop_instance_uid

    @property
    def series_instance_uid(self) -> str:
        return self.facts.series_instance_uid


def is_report(answer: Answer) -> bool:
    """True for an SR, KO or PR: a document a pull never retrieves to caption."""
    return answer.facts.modality in REPORT_MODALITIES or answer.facts.sop_class_uid.startswith(SR_CLASS_PREFIX)


@dataclass(frozen=True)
class Wanted:
    """One instance to retrieve; `note` is the series note its SR carries (a representative's)."""

    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    modality: str = ""
    note: str | None = None


@dataclass
class RetrievalPlan:
    """What to retrieve from one study, and what was decided without retrieving."""

    wanted: list[Wanted] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (SOPInstanceUID, reason): not retrieved
    whole_series: set[str] = field(default_factory=set)  # chosen after retrieval: every member must arrive
    members: dict[str, int] = field(default_factory=dict)  # series -> instances found (reports excluded)
    found: int = 0

    def wanted_in(self, series_uid: str) -> list[Wanted]:
        return [w for w in self.wanted if w.series_uid == series_uid]


class _Known:
    """Which values of a query's answers count as known (module docstring)."""

    def __init__(self, answers: Sequence[Answer]) -> None:
        self.supported = frozenset().union(*(a.answered for a in answers)) if answers else frozenset()

    def __call__(self, answer: Answer, keyword: str) -> bool:
        return keyword in answer.answered or keyword in self.supported


def _criteria(rule: Rule) -> list[str]:
    return [c for c in CRITERION_KEYWORDS if getattr(rule, c) not in ((), None)]


def decide_answer(answer: Answer, config: SelectConfig, known: _Known | None = None) -> Decision | None:
    """What the rules decide for `answer`, or None when that depends on a value it did not answer.

    A rule is tried without its criteria on unknown values: if that already fails, the rule cannot
    match whatever the values are; if it holds and the rule has such criteria, the outcome is open.
    """
    known = known or _Known([answer])
    for rule in config.all_rules:
        unknown = [c for c in _criteria(rule) if not known(answer, CRITERION_KEYWORDS[c])]
        reduced = dataclasses.replace(rule, **{c: None if c in ("series_description", "min_rows", "min_columns")
                                               else () for c in unknown})
        if not reduced.matches(answer.facts):
            continue
        if unknown:
            return None
        break
    # Every rule before the deciding one fails on known values, so decide() reaches the same rule.
    return decide(answer.facts, config)


def _choice_known(members: Sequence[Answer], known: _Known) -> bool:
    """True when the answers hold everything ``representative`` reads for every member."""
    if not all(known(m, "ImagePositionPatient") and known(m, "ImageOrientationPatient") for m in members):
        return False
    if all(m.facts.slice_position is not None for m in members):
        return True
    return all(known(m, "InstanceNumber") for m in members)


def _wanted(series_uid: str, answer: Answer) -> Wanted:
    return Wanted(series_uid, answer.sop_instance_uid, answer.facts.sop_class_uid, answer.facts.modality)


def plan_retrieval(answers: Iterable[Answer], config: SelectConfig) -> RetrievalPlan:
    """Decide from the answers what to retrieve (module docstring); reports are left out entirely."""
    distinct: dict[str, Answer] = {}
    for a in answers:
        if a.sop_instance_uid and not is_report(a):
            distinct.setdefault(a.sop_instance_uid, a)
    items = list(distinct.values())
    known = _Known(items)
    plan = RetrievalPlan(found=len(items))
    series: dict[str, list[tuple[Answer, Decision | None]]] = {}
    for a in items:
        decision = decide_answer(a, config, known)
        if decision is not None and not decision.caption:
            plan.skipped.append((a.sop_instance_uid, decision.reason))
        series.setdefault(a.series_instance_uid or a.sop_instance_uid, []).append((a, decision))
    for series_uid, members in series.items():
        plan.members[series_uid] = len(members)
        kept = [(a, d) for a, d in members if d is None or d.caption]
        if not kept:
            continue
        if config.each or not members[0][0].series_instance_uid:
            plan.wanted += [_wanted(series_uid, a) for a, _ in kept]
            continue
        undecided = any(d is None for _, d in kept)
        if len(kept) > 1 and (undecided or not _choice_known([a for a, _ in kept], known)):
            plan.whole_series.add(series_uid)
            plan.wanted += [_wanted(series_uid, a) for a, _ in kept]
            continue
        chosen = representative([a.facts for a, _ in kept])
        note = series_note(series_uid, len(kept)) if len(kept) > 1 else None
        plan.wanted.append(Wanted(series_uid, chosen.sop_instance_uid, chosen.sop_class_uid, chosen.modality, note))
        plan.skipped += [(a.sop_instance_uid, not_representative_reason(series_uid, chosen.sop_instance_uid))
                         for a, _ in kept if a.sop_instance_uid != chosen.sop_instance_uid]
    return plan


def merged(series_answer: Dataset, instance_answer: Dataset) -> Dataset:
    """The instance's answer with its series' attributes added (the instance's own values win)."""
    out = Dataset()
    for source in (series_answer, instance_answer):
        for element in source:
            out[element.tag] = element
    return out
