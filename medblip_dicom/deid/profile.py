"""The profile: DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile, and the
options a user names, as deid recipes shipped with this package (``recipes/*.dicom``).

``basic.dicom`` is Table E.1-1's Basic Profile column (plus catch-alls by VR for what the table
does not name); most options are one more recipe loaded after it, whose KEEP or REPLACE lines win
over the Basic Profile's REMOVE and BLANK in deid. The Retain Longitudinal Temporal Information
with Modified Dates Option has no recipe of its own: the Basic recipe sends every date and time
through one function, which empties it, or, with the option, shifts it by the patient's days. The
codes are those of CID 7050 ("De-identification Method"), written into
DeidentificationMethodCodeSequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medblip_dicom.deid.errors import DeidentificationError

PROFILE_NAME = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile"


@dataclass(frozen=True)
class Option:
    """One profile option: its name on the command line, its DCM code and meaning, its recipe file."""

    name: str
    code: str
    meaning: str
    recipe: str | None


BASIC = Option("basic", "113100", "Basic Application Confidentiality Profile", "basic.dicom")
CLEAN_PIXELS = Option("clean-pixel-data", "113101", "Clean Pixel Data Option", None)

#: The options a user may name, in the order their codes are written.
OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("retain-modified-dates", "113107", "Retain Longitudinal Temporal Information Modified Dates Option",
           None),
    Option("clean-descriptors", "113105", "Clean Descriptors Option", "clean-descriptors.dicom"),
    Option("retain-device-identity", "113109", "Retain Device Identity Option", "retain-device-identity.dicom"),
    Option("retain-institution-identity", "113112", "Retain Institution Identity Option",
           "retain-institution-identity.dicom"),
    Option("retain-patient-characteristics", "113108", "Retain Patient Characteristics Option",
           "retain-patient-characteristics.dicom"),
)}


def options(names: Iterable[str]) -> tuple[Option, ...]:
    """The options named, in :data:`OPTIONS` order; an unknown name is a DeidentificationError listing them."""
    wanted = {n.strip().lower() for n in names if n.strip()}
    unknown = sorted(wanted - set(OPTIONS))
    if unknown:
        raise DeidentificationError(f"unknown de-identification option {', '.join(unknown)}; the options are "
                                    f"{', '.join(OPTIONS)}")
    return tuple(o for name, o in OPTIONS.items() if name in wanted)


def recipe_path(name: str) -> Path:
    """The shipped recipe file `name` (package data)."""
    return Path(str(resources.files("medblip_dicom.deid") / "recipes" / name))


def recipe_files(chosen: Iterable[Option]) -> list[str]:
    """The Basic Profile's recipe, then each chosen option's, as paths for deid."""
    return [str(recipe_path(o.recipe)) for o in (BASIC, *chosen) if o.recipe]
