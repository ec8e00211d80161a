"""What gets captioned: selection rules, and one caption per series.

A PACS that receives a 400-slice CT should get one AI report for the series, not 400, and the
model was trained on single representative images (ROCO), not on every slice. So, before anything
is decoded:

1. **Rules** decide per instance (:func:`decide`): an ordered list, first match wins, no match
   means caption. A rule matches when every criterion it names holds (modality, SOP class, body
   part, series description regex, image type, minimum rows / columns; a rule naming none matches
   every instance, so a last ``action = "skip"`` rule turns the list into an allow-list). After the configured rules
   come the default ones (``defaults = true``): localizers and scouts (ImageType LOCALIZER or
   SCOUT) are skipped. A configured rule with ``action = "caption"`` that matches first overrides
   them.
2. **One caption per series** (``per_series = "representative"``, the default): the instances of a
   series that the rules let through are grouped by SeriesInstanceUID, and exactly one is
   captioned, its :func:`representative`: the instance at index ``n // 2`` of the instances sorted
   by position along the slice normal (ImagePositionPatient projected on the normal of
   ImageOrientationPatient) when every instance has a position, else by InstanceNumber when every
   instance has one, and by SOPInstanceUID to break ties (or alone). A single multi-frame instance
   keeps the middle-frame rule of :mod:`medblip_dicom.pixels`. The choice depends only on the set
   of instances, never on their arrival order. ``per_series = "each"`` captions every instance.

:func:`plan` applies both to a complete set (a folder, a list); the services apply the same
functions to a series once it has been quiet for ``series_quiet_s``
(:mod:`medblip_dicom.integrations.worker.series_hold`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PER_SERIES = ("representative", "each")
ACTIONS = ("caption", "skip")
RULE_KEYS = ("action", "name", "modality", "sop_class", "body_part", "series_description", "image_type",
             "min_rows", "min_columns")
LOCALIZER_TYPES = ("LOCALIZER", "SCOUT")

#: The header attributes selection reads (a reader may load only these).
FACT_KEYWORDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "Modality",
                 "BodyPartExamined", "SeriesDescription", "ImageType", "Rows", "Columns", "ImagePositionPatient",
                 "ImageOrientationPatient", "InstanceNumber", "NumberOfFrames")


class SelectionError(ValueError):
    """A selection setting that cannot work; the message names the key."""


@dataclass(frozen=True)
class InstanceFacts:
    """What selection looks at, read from an instance's header (never its pixels)."""

    sop_instance_uid: str
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    image_type: tuple[str, ...] = ()
    rows: int | None = None
    columns: int | None = None
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    instance_number: int | None = None
    frames: int = 1

    @classmethod
    def from_dataset(cls, ds: Any) -> InstanceFacts:
        """Read the facts from a pydicom data set; a value that cannot be read counts as absent."""

        def text(keyword: str) -> str:
            try:
                value = ds.get(keyword)
            except Exception:  # noqa: BLE001 - a broken value is an absent one here
                return ""
            return str(value).strip()[:256] if value is not None else ""

        def numbers(keyword: str, count: int) -> tuple[float, ...] | None:
            try:
                values = [float(v) for v in ds.get(keyword) or ()]
            except Exception:  # noqa: BLE001
                return None
            return tuple(values) if len(values) == count and all(math.isfinite(v) for v in values) else None

        def integer(keyword: str) -> int | None:
            try:
                value = ds.get(keyword)
                return int(value) if value not in (None, "") else None
            except Exception:  # noqa: BLE001
                return None

        try:
            raw_type = ds.get("ImageType") or ()
            image_type = tuple(str(v).strip().upper() for v in ([raw_type] if isinstance(raw_type, str) else raw_type))
        except Exception:  # noqa: BLE001
            image_type = ()
        return cls(
            sop_instance_uid=text("SOPInstanceUID"), series_instance_uid=text("SeriesInstanceUID"),
            study_instance_uid=text("StudyInstanceUID"), sop_class_uid=text("SOPClassUID"),
            modality=text("Modality").upper(), body_part=text("BodyPartExamined").upper(),
            series_description=text("SeriesDescription"), image_type=image_type, rows=integer("Rows"),
            columns=integer("Columns"), position=numbers("ImagePositionPatient", 3),  # type: ignore[arg-type]
            orientation=numbers("ImageOrientationPatient", 6),  # type: ignore[arg-type]
            instance_number=integer("InstanceNumber"), frames=max(integer("NumberOfFrames") or 1, 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceFacts:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("image_type", "position", "orientation"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known)

    @property
    def slice_position(self) -> float | None:
        """The position along the slice normal (ImagePositionPatient . (row x column direction))."""
        if self.position is None or self.orientation is None:
            return None
        r, c = self.orientation[:3], self.orientation[3:]
        normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        if not any(normal):
            return None
        return sum(p * n for p, n in zip(self.position, normal))


def _sop_class_uid(value: str, where: str) -> str:
    """A SOP class given as a UID or as a pydicom keyword (``CTImageStorage``), as a UID."""
    import pydicom.uid

    if re.fullmatch(r"[0-9]+(\.[0-9]+)+", value):
        return value
    uid = getattr(pydicom.uid, value, None)
    if not isinstance(uid, str) or not re.fullmatch(r"[0-9]+(\.[0-9]+)+", uid):
        raise SelectionError(f"{where} sop_class: {value!r} is neither a UID nor a pydicom SOP class keyword "
                             "(for example CTImageStorage)")
    return str(uid)


def _names(values: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or \
            not all(isinstance(v, str) and v.strip() for v in values):
        raise SelectionError(f"{where} {key}: must be a list of names, got {values!r}")
    return tuple(v.strip() for v in values)


@dataclass(frozen=True)
class Rule:
    """One ``[[select.rule]]``: an action and the criteria that must all hold for it to apply."""

    action: str
    name: str = ""
    modality: tuple[str, ...] = ()
    sop_class: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series_description: str | None = None
    image_type: tuple[str, ...] = ()
    min_rows: int | None = None
    min_columns: int | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> Rule:
        """Build a rule from a TOML table; every mistake raises :class:`SelectionError` naming the key."""
        if not isinstance(data, Mapping):
            raise SelectionError(f"{where}: must be a table, got {data!r}")
        unknown = sorted(set(data) - set(RULE_KEYS))
        if unknown:
            raise SelectionError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(RULE_KEYS)}")
        action = data.get("action")
        if action not in ACTIONS:
            raise SelectionError(f"{where} action: must be \"caption\" or \"skip\", got {action!r}")
        description = data.get("series_description")
        if description is not None:
            if not isinstance(description, str):
                raise SelectionError(f"{where} series_description: must be a regular expression, got {description!r}")
            try:
                re.compile(description)
            except re.error as exc:
                raise SelectionError(f"{where} series_description: {description!r} is not a valid regular "
                                     f"expression ({exc})") from None
        sizes = {}
        for key in ("min_rows", "min_columns"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SelectionError(f"{where} {key}: must be a whole number >= 1, got {value!r}")
            sizes[key] = value
        name = data.get("name", "")
        if not isinstance(name, str):
            raise SelectionError(f"{where} name: must be text, got {name!r}")
        rule = cls(
            action=action, name=name,
            modality=tuple(v.upper() for v in _names(data.get("modality", []), "modality", where)),
            sop_class=tuple(_sop_class_uid(v, where) for v in _names(data.get("sop_class", []), "sop_class", where)),
            body_part=tuple(v.upper() for v in _names(data.get("body_part", []), "body_part", where)),
            series_description=description,
            image_type=tuple(v.upper() for v in _names(data.get("image_type", []), "image_type", where)),
            **sizes,
        )
        return rule

    def criteria(self) -> list[str]:
        """The criteria in words, for reasons and logs."""
        out = []
        for key in ("modality", "sop_class", "body_part", "image_type"):
            values = getattr(self, key)
            if values:
                out.append(f"{key} {', '.join(values)}")
        if self.series_description is not None:
            out.append(f"series_description /{self.series_description}/")
        for key in ("min_rows", "min_columns"):
            if getattr(self, key) is not None:
                out.append(f"{key} {getattr(self, key)}")
        return out

    def matches(self, facts: InstanceFacts) -> bool:
        if self.modality and facts.modality not in self.modality:
            return False
        if self.sop_class and facts.sop_class_uid not in self.sop_class:
            return False
        if self.body_part and facts.body_part not in self.body_part:
            return False
        if self.series_description is not None and not re.search(self.series_description, facts.series_description):
            return False
        if self.image_type and not set(self.image_type) & set(facts.image_type):
            return False
        if self.min_rows is not None and (facts.rows is None or facts.rows < self.min_rows):
            return False
        return self.min_columns is None or (facts.columns is not None and facts.columns >= self.min_columns)


#: The documented default rules, evaluated after the configured ones.
DEFAULT_RULES = (Rule(action="skip", name="localizer", image_type=LOCALIZER_TYPES),)


@dataclass(frozen=True)
class SelectConfig:
    """The ``[select]`` table: one caption per series or per instance, the quiet time, the rules."""

    per_series: str = "representative"
    series_quiet_s: float = 10.0
    defaults: bool = True
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if self.per_series not in PER_SERIES:
            raise SelectionError(f"[select] per_series: must be \"representative\" or \"each\", got {self.per_series!r}")
        quiet = self.series_quiet_s
        if isinstance(quiet, bool) or not isinstance(quiet, (int, float)) or not 0 <= quiet <= sys.float_info.max:
            raise SelectionError(f"[select] series_quiet_s: must be a number >= 0, got {quiet!r}")
        if not isinstance(self.defaults, bool):
            raise SelectionError(f"[select] defaults: must be true or false, got {self.defaults!r}")
        rules = tuple(r if isinstance(r, Rule) else Rule.from_mapping(r, f"[[select.rule]] #{i + 1}")
                      for i, r in enumerate(self.rules))
        object.__setattr__(self, "rules", rules)

    @property
    def all_rules(self) -> tuple[Rule, ...]:
        return self.rules + (DEFAULT_RULES if self.defaults else ())

    @property
    def each(self) -> bool:
        return self.per_series == "each"


@dataclass(frozen=True)
class Decision:
    """What the rules say about one instance."""

    caption: bool
    rule: Rule | None = None
    reason: str = ""

    @property
    def kind(self) -> str:
        """``localizer`` for the default rule, ``rule`` for a configured one, ``""`` when captioned."""
        if self.caption:
            return ""
        return "localizer" if self.rule in DEFAULT_RULES else "rule"


def decide(facts: InstanceFacts, config: SelectConfig) -> Decision:
    """The first matching rule's action (no match: caption)."""
    for i, rule in enumerate(config.all_rules):
        if rule.matches(facts):
            if rule.action == "caption":
                return Decision(True, rule)
            if rule in DEFAULT_RULES and i >= len(config.rules):
                reason = f"a localizer or scout (ImageType {'/'.join(facts.image_type)}), skipped by the default rule"
            else:
                label = rule.name or f"rule {i + 1}"
                reason = f"skipped by selection {label} ({'; '.join(rule.criteria()) or 'every instance'})"
            return Decision(False, rule, reason)
    return Decision(True)


def representative(members: Sequence[InstanceFacts]) -> InstanceFacts:
    """The one instance of a series to caption (see the module docstring).

    Files that carry the same SOPInstanceUID are one instance: the choice is made among distinct
    instances (the first file of each), so a second copy neither shifts the middle nor competes.
    """
    if not members:
        raise ValueError("a series without instances has no representative")
    distinct: dict[str, InstanceFacts] = {}
    for m in members:
        distinct.setdefault(m.sop_instance_uid, m)
    members = list(distinct.values())
    if all(m.slice_position is not None for m in members):
        order = sorted(members, key=lambda m: (m.slice_position, m.sop_instance_uid))
    elif all(m.instance_number is not None for m in members):
        order = sorted(members, key=lambda m: (m.instance_number, m.sop_instance_uid))
    else:
        order = sorted(members, key=lambda m: m.sop_instance_uid)
    return order[len(order) // 2]


def not_representative_reason(series_uid: str, captioned_uid: str) -> str:
    return f"not the representative of series {series_uid} (instance {captioned_uid} captioned)"


def series_note(series_uid: str, count: int) -> str:
    """The text an SR of a representative carries: it speaks for the whole series."""
    return f"One AI caption for series {series_uid}, {count} instance{'s' if count != 1 else ''}: this is its " \
           "representative (the middle one by position)."


@dataclass(frozen=True)
class Choice:
    """What :func:`plan` decided for one instance."""

    facts: InstanceFacts
    caption: bool
    reason: str = ""
    kind: str = ""  # "", "rule", "localizer", "not_representative"
    series_size: int = 1


@dataclass
class _Group:
    members: list[InstanceFacts] = field(default_factory=list)


def plan(facts: Iterable[InstanceFacts], config: SelectConfig) -> list[Choice]:
    """Decide for a complete set of instances (a folder): rules first, then one per series.

    Returns one :class:`Choice` per instance, in input order.
    """
    items = list(facts)
    decisions = [decide(f, config) for f in items]
    groups: dict[str, _Group] = {}
    for f, d in zip(items, decisions):
        if d.caption and not config.each and f.series_instance_uid:
            groups.setdefault(f.series_instance_uid, _Group()).members.append(f)
    chosen = {uid: representative(g.members).sop_instance_uid for uid, g in groups.items()}
    sizes = {uid: len({m.sop_instance_uid for m in g.members}) for uid, g in groups.items()}
    out = []
    for f, d in zip(items, decisions):
        if not d.caption:
            out.append(Choice(f, False, d.reason, d.kind))
        elif config.each or not f.series_instance_uid:
            out.append(Choice(f, True))
        else:
            rep, size = chosen[f.series_instance_uid], sizes[f.series_instance_uid]
            if f.sop_instance_uid == rep:  # every file of the chosen instance (copies are the same instance)
                out.append(Choice(f, True, series_size=size))
            else:
                out.append(Choice(f, False, not_representative_reason(f.series_instance_uid, rep),
                                  "not_representative", size))
    return out


def config_from_mapping(data: Mapping[str, Any] | None) -> SelectConfig:
    """A :class:`SelectConfig` from the ``[select]`` table (``rule`` holds the ``[[select.rule]]`` list)."""
    data = dict(data or {})
    known = {"per_series", "series_quiet_s", "defaults", "rule"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SelectionError(f"[select] unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    rules = data.pop("rule", [])
    if not isinstance(rules, list):
        raise SelectionError("[select] rule: write each rule as a [[select.rule]] table")
    return SelectConfig(rules=tuple(rules), **data)
