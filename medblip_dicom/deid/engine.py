"""De-identify one DICOM object: pixels checked, header through the profile, the method recorded.

:meth:`Deidentifier.dataset` runs, on a copy of the object:

1. the burned-in text check on the original header (:mod:`.burned_in`): refused, masked or passed;
2. the identifying values collected before anything is removed (:mod:`.scrub`), for the captions
   and for the Clean Descriptors Option;
3. private attributes removed, then deid's parser with the profile's recipes (:mod:`.profile`),
   whose functions (``func:`` in the recipes) are the keyed pseudonyms, date shifts and cleaners
   defined here;
4. PatientIdentityRemoved ``YES``, DeidentificationMethod (profile, options, library versions),
   DeidentificationMethodCodeSequence (CID 7050), LongitudinalTemporalInformationModified, and a
   zeroed preamble.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from medblip_dicom import __version__
from medblip_dicom.deid import burned_in, profile
from medblip_dicom.deid.errors import DeidentificationError, import_deid
from medblip_dicom.deid.keys import Pseudonyms, patient_key
from medblip_dicom.deid.scrub import Identifiers, identifiers_of, kept_values
from medblip_dicom.dicomtext import dicom_text

logger = logging.getLogger(__name__)

#: A UID under this root is one of the standard's (a class, transfer syntax, coding scheme): kept.
DICOM_ROOT = "1.2.840.10008."
#: Keywords whose UIDs name kinds of things, not instances: kept even outside the standard's root.
_KIND_UID_ENDINGS = ("ClassUID", "SyntaxUID", "SchemeUID")
#: Dates and times never kept, even when dates are shifted.
_NEVER_KEPT = frozenset({"PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar",
                         "PatientDeathDateInAlternativeCalendar", "LastMenstrualDate"})


@dataclass
class Result:
    """One object after de-identification: ``dataset`` (None when refused), the ``refused`` reason,
    whether its pixels were ``masked``, and the ``identifiers`` the profile removed (for captions)."""

    dataset: Dataset | None
    refused: str | None
    masked: bool
    identifiers: Identifiers
    day_shift: int | None


def library_versions() -> dict[str, str]:
    """The versions that made an output: this project, deid, pydicom."""
    from importlib.metadata import PackageNotFoundError, version

    import pydicom

    import_deid()
    try:
        deid_version = version("deid")
    except PackageNotFoundError:
        deid_version = "unknown"
    return {"medblip-dicom": __version__, "deid": deid_version, "pydicom": pydicom.__version__}


class Deidentifier:
    """The profile with its options, the key's pseudonyms and an optional mask recipe (module docstring)."""

    def __init__(self, pseudonyms: Pseudonyms, options: Iterable[str] = (), *,
                 mask_recipe: str | None = None) -> None:
        deid_config = import_deid("deid.config")
        self.pseudonyms = pseudonyms
        self.options = profile.options(options)
        self.shift_dates = any(o.name == "retain-modified-dates" for o in self.options)
        with _quiet():
            try:
                self._recipe = deid_config.DeidRecipe(deid=profile.recipe_files(self.options), base=False)
            except SystemExit:
                raise DeidentificationError("deid could not load the profile's recipes; reinstall medblip-dicom") from None
        self.mask = burned_in.MaskRecipe(mask_recipe) if mask_recipe else None
        self.versions = library_versions()

    def describe(self) -> dict[str, Any]:
        """The profile, options (with codes) and libraries, as the data card states them."""
        return {"profile": profile.PROFILE_NAME, "profile_code": f"{profile.BASIC.code} (DCM)",
                "options": [{"name": o.name, "code": f"{o.code} (DCM)", "meaning": o.meaning} for o in self.options],
                "mask_recipe": bool(self.mask), "libraries": dict(self.versions),
                "key_fingerprint": self.pseudonyms.fingerprint()}

    def dataset(self, original: Dataset) -> Result:
        """De-identify a copy of `original` (module docstring); `original` is not changed."""
        decision = burned_in.decide(original, self.mask)
        found = identifiers_of(original)
        if decision.refused:
            return Result(None, decision.refused, False, found, None)
        ds = copy.deepcopy(original)
        if decision.masked:
            burned_in.apply_mask(ds, decision)
        patient = patient_key(original)
        shift = self.pseudonyms.day_shift(patient) if self.shift_dates else None
        parser_module = import_deid("deid.dicom.parser")
        with _quiet():
            try:
                parser = parser_module.DicomParser(ds, recipe=self._recipe)
                for name, function in self._functions(patient, shift, found).items():
                    parser.define(name, function)
                parser.parse(remove_private=True)
            except SystemExit:
                raise DeidentificationError("deid stopped on this object (a malformed element); it is not exported") from None
        ds = parser.dicom
        self._record_method(ds, masked=decision.masked)
        return Result(ds, None, decision.masked, found.without(kept_values(ds)), shift)

    def _functions(self, patient: str, shift: int | None, found: Identifiers) -> dict[str, Callable[..., Any]]:
        """The ``func:`` names of the recipes, bound to this object's patient. deid calls each with
        ``dicom``, ``value``, ``field`` and ``item``; a function never returns None (deid would keep
        the original value)."""
        p = self.pseudonyms

        def each(field: Any, convert: Callable[[str], str]) -> Any:
            value = field.element.value
            if isinstance(value, (list, tuple, MultiValue)):
                return [convert(str(v)) if v not in (None, "") else "" for v in value]
            return convert(str(value)) if value not in (None, "") else ""

        def uid(field: Any = None, **_: Any) -> Any:
            if (field.element.keyword or "").endswith(_KIND_UID_ENDINGS):
                return each(field, lambda v: v)
            return each(field, lambda v: v if v.startswith(DICOM_ROOT) else p.uid(v))

        def person_name(field: Any = None, **_: Any) -> Any:
            return p.patient_name(patient) if field.element.keyword == "PatientName" else ""

        def temporal(convert: Callable[[str], str]) -> Callable[..., Any]:
            def function(field: Any = None, **_: Any) -> Any:
                if shift is None or field.element.keyword in _NEVER_KEPT:
                    return ""
                return each(field, convert)
            return function

        return {
            "pseudonymous_uid": uid,
            "person_name": person_name,
            "patient_id": lambda field=None, **_: p.patient_id(patient),
            "pseudonymous_id": lambda field=None, **_: each(field, p.identifier),
            "date": temporal(lambda v: shift_date(v, shift or 0)),
            "datetime": temporal(lambda v: shift_datetime(v, shift or 0)),
            "time": temporal(lambda v: v),
            "cleaned_text": lambda field=None, **_: each(field, found.scrub),
        }

    def _record_method(self, ds: Dataset, *, masked: bool) -> None:
        """PatientIdentityRemoved, DeidentificationMethod(CodeSequence), LongitudinalTemporalInformationModified."""
        ds.PatientIdentityRemoved = "YES"
        chosen = [*self.options, *([profile.CLEAN_PIXELS] if masked else [])]
        method = [dicom_text("PS3.15 Annex E Basic Profile", "LO", what="DeidentificationMethod", machine=True),
                  *(dicom_text(o.meaning, "LO", what="DeidentificationMethod", machine=True) for o in chosen),
                  dicom_text(f"medblip-dicom {self.versions['medblip-dicom']}, deid {self.versions['deid']}", "LO",
                             what="DeidentificationMethod", machine=True)]
        ds.DeidentificationMethod = method
        codes = []
        for option in (profile.BASIC, *chosen):
            item = Dataset()
            item.CodeValue = option.code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = dicom_text(option.meaning, "LO", what="CodeMeaning", machine=True)
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if self.shift_dates else "REMOVED"
        ds.preamble = b"\0" * 128


def shift_date(value: str, days: int) -> str:
    """A DA value (YYYYMMDD) moved by `days`; a value that is not a date becomes empty."""
    text = value.strip()
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError):
        return ""
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return ""


def shift_datetime(value: str, days: int) -> str:
    """A DT value with its date part moved by `days` (time and offset kept); only a year, or no
    readable date, becomes empty."""
    text = value.strip()
    moved = shift_date(text[:8], days) if len(text) >= 8 else ""
    return moved + text[8:] if moved else ""


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """deid prints to stdout and stderr, sometimes values of the header: never let them out."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
