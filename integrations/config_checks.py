"""The checks every configuration section uses: each error names the section and key and what is allowed."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from medblip_dicom.errors import MedblipError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, 1..16


class ConfigError(MedblipError):
    """The configuration file or a flag holds a value that cannot work; the message names the key."""


def fail(section: str, key: str, message: str) -> None:
    raise ConfigError(f"[{section}] {key}: {message}")


def check_ae_title(section: str, key: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip() or not _AE_TITLE.match(value):
        fail(section, key, f"{value!r} is not a DICOM AE title (1 to 16 printable ASCII characters, no backslash)")


def check_positive(section: str, key: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(section, key, f"must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        fail(section, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_int(section: str, key: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(section, key, f"must be a whole number >= {minimum}, got {value!r}")


def optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return Path(value).expanduser()
