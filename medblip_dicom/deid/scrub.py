"""Identifying header values, and taking them out of free text (captions, descriptions, reasons).

A reviewer may type the patient's name, an ID or a date into a caption. :func:`identifiers_of`
collects what identifies the patient in one DICOM object before the profile removes it:

- **names**: every person name (PN) anywhere in the object, split into words, so that the name is
  found in any order and case ("Jane Doe", "DOE, JANE", "Mrs Doe");
- **identifiers**: the values of attributes whose keyword ends in ID, IDs, Number(s) or Locator
  (patient ID, other IDs, accession number, order numbers, telephone numbers, serial numbers),
  found with or without their separators ("RLB-4417", "RLB 4417", "rlb4417");
- **dates**: every date (DA, and the date of a DT), found in common formats (20240131,
  2024-01-31, 31/01/2024, 01/31/24, 31.1.2024, 31 Jan 2024, January 31st, 2024);
- **places**: the institution, department, station and addresses, as phrases and their parts.

:meth:`Identifiers.scrub` removes every match from a text and tidies the spaces left behind.
Values the output keeps (an option retained them) are dropped with :meth:`Identifiers.without`.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_ID_ENDINGS = ("ID", "IDs", "Number", "Numbers", "Locator")
_ID_VRS = frozenset({"LO", "SH", "LT", "ST", "UC", "UT"})
_PLACES = frozenset({
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "PatientAddress",
    "ReferringPhysicianAddress", "PersonAddress", "CurrentPatientLocation", "PatientInstitutionResidence",
    "RegionOfResidence", "ScheduledPatientInstitutionResidence", "PerformedLocation", "RequestedProcedureLocation",
    "ScheduledProcedureStepLocation", "OrderEntererLocation", "PerformedStationName", "ScheduledStationName",
    "ResponsibleOrganization", "VerifyingOrganization", "ClinicalTrialSiteName", "ClinicalTrialSponsorName",
})
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
#: A name word or place part shorter than this is not looked for (initials would cut ordinary words).
MIN_WORD = 2
#: An identifier with fewer letters and digits than this is not looked for.
MIN_ID = 3
#: A place part shorter than this is not looked for on its own.
MIN_PLACE = 4


def _values(value: object) -> Iterator[str]:
    for v in value if isinstance(value, (list, tuple, MultiValue)) else [value]:
        if v is not None and str(v).strip():
            yield str(v).strip()


def _fold(text: str) -> str:
    """`text` without accents ("Müller" -> "Muller"): a name is also found as typed on a plain keyboard."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _walk(ds: Dataset) -> Iterator[tuple[str, str, object]]:
    """(keyword, VR, value) of every element, sequences included."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _walk(item)
        else:
            yield elem.keyword or "", elem.VR, elem.value


def _date(text: str) -> dt.date | None:
    digits = text.strip()[:8]
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) if len(digits) == 8 else None
    except ValueError:
        return None


@dataclass
class Identifiers:
    """What identifies the patient of one object (module docstring), and the cleaner built from it."""

    names: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    dates: set[dt.date] = field(default_factory=set)
    places: set[str] = field(default_factory=set)
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def update(self, other: Identifiers) -> Identifiers:
        """Add `other`'s values (a manifest row may hold several objects' identifiers); returns self."""
        self.names |= other.names
        self.ids |= other.ids
        self.dates |= other.dates
        self.places |= other.places
        self._pattern = None
        return self

    def without(self, kept: Iterable[str]) -> Identifiers:
        """A copy without the identifiers and places whose exact value the output keeps."""
        kept_values = {k.casefold() for k in kept}
        return Identifiers(set(self.names), {i for i in self.ids if i.casefold() not in kept_values}, set(self.dates),
                           {p for p in self.places if p.casefold() not in kept_values})

    def __bool__(self) -> bool:
        return bool(self.names or self.ids or self.dates or self.places)

    def pattern(self) -> re.Pattern[str] | None:
        """One regular expression matching every identifying value (None when there is none)."""
        if self._pattern is None and self:
            parts = [_id_pattern(i) for i in sorted(self.ids, key=len, reverse=True)]
            parts += [_date_pattern(d) for d in sorted(self.dates)]
            words = {w for p in self.places for w in [p, *re.split(r"[\^,;\n\r]+", p)] if len(w.strip()) >= MIN_PLACE}
            words |= self.names
            words |= {_fold(w) for w in words}
            parts += [rf"(?<!\w){re.escape(w.strip())}(?!\w)" for w in sorted(words, key=len, reverse=True) if w.strip()]
            parts = [p for p in parts if p]
            self._pattern = re.compile("|".join(parts), re.IGNORECASE) if parts else None
        return self._pattern

    def scrub(self, text: str) -> str:
        """`text` with every identifying value removed and the spaces and punctuation left behind tidied."""
        pattern = self.pattern()
        if pattern is None or not text:
            return text
        cleaned = pattern.sub(" ", text)
        if cleaned == text:
            return text
        cleaned = re.sub(r"\(\s*[,;:.]?\s*\)|\[\s*\]", " ", cleaned)
        cleaned = re.sub(r"[ \t]+([,.;:!?)])", r"\1", cleaned)
        cleaned = re.sub(r"([(])[ \t]+", r"\1", cleaned)
        cleaned = re.sub(r"([,;:])(\s*[,;:])+", r"\1", cleaned)
        cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)
        return cleaned.strip(" \t,;:")


def _id_pattern(value: str) -> str:
    """The identifier with any separators (or none) between its letters and digits."""
    chars = [c for c in value if c.isalnum()]
    if len(chars) < MIN_ID:
        return ""
    return r"(?<![^\W_])" + r"[\W_]*".join(re.escape(c) for c in chars) + r"(?![^\W_])"


def _date_pattern(day: dt.date) -> str:
    """`day` in the common numeric and written forms (day and month with or without a leading zero)."""
    y, y2 = f"{day.year:04d}", f"{day.year % 100:02d}"
    m, d = f"0?{day.month}", f"0?{day.day}"
    sep = r"[-/. ]"
    month = _MONTHS[day.month - 1]
    mon = rf"(?:{month}|{month[:3]}\.?)"
    dth = rf"{d}(?:st|nd|rd|th)?"
    forms = [
        f"{y}{day.month:02d}{day.day:02d}", f"{y}{sep}{m}{sep}{d}",
        f"{d}{sep}{m}{sep}{y}", f"{m}{sep}{d}{sep}{y}", f"{d}{sep}{m}{sep}{y2}", f"{m}{sep}{d}{sep}{y2}",
        rf"{dth}(?:\s+of)?\s+{mon},?\s+{y}", rf"{mon}\s+{dth},?\s+{y}",
    ]
    return r"(?<![\w])(?:" + "|".join(forms) + r")(?![\w])"


def _name_words(value: object) -> Iterator[str]:
    """The words of the family, given and middle names of every component group ("=" separated);
    prefixes and suffixes (titles such as Dr, Mr, MD) are not names."""
    for name in _values(value):
        for group in name.split("="):
            for component in group.split("^")[:3]:
                for word in re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", component):
                    if len(word) >= MIN_WORD and not word.isdigit():
                        yield word
                        yield from (w for w in re.split(r"['’-]", word) if len(w) >= MIN_WORD)


def is_identifier(keyword: str, vr: str) -> bool:
    """True for an attribute whose value is an identifier (module docstring)."""
    return vr in _ID_VRS and keyword.endswith(_ID_ENDINGS) and not keyword.endswith("UID")


def identifiers_of(ds: Dataset) -> Identifiers:
    """The identifying values of `ds` (read before the profile runs; private attributes are not read:
    their names and meanings are unknown, the profile removes them)."""
    found = Identifiers()
    for keyword, vr, value in _walk(ds):
        if not keyword:
            continue
        if vr == "PN":
            found.names.update(_name_words(value))
        elif vr in ("DA", "DT"):
            found.dates.update(d for d in map(_date, _values(value)) if d is not None)
        elif is_identifier(keyword, vr):
            found.ids.update(_values(value))
        elif keyword in _PLACES:
            found.places.update(_values(value))
    return found


def kept_values(ds: Dataset) -> set[str]:
    """Every text value left in `ds`, for :meth:`Identifiers.without`."""
    return {v for _, vr, value in _walk(ds) if vr not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN")
            for v in _values(value) if isinstance(v, str)}
