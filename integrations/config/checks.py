"""The checks every configuration section uses: each error names the section and key and what is allowed."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from medblip_dicom.errors import MedblipError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, 1..16


class ConfigError(MedblipError):
    """The configuration file or a flag holds a value that cannot work; the message names the key."""


def fail(section: str, key: str, message: str) -> NoReturn:
    raise ConfigError(f"[{section}] {key}: {message}")


def shown(value: Any) -> str:
    """A value as a message shows it: its repr, cut short (a file may hold a huge one)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_ae_title(section: str, key: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip() or not _AE_TITLE.match(value):
        fail(section, key, f"{value!r} is not a DICOM AE title (1 to 16 printable ASCII characters, no backslash)")


def check_positive(section: str, key: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(section, key, f"must be a number, got {shown(value)}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:
        fail(section, key, f"must be a finite number, got {shown(value)}")
    if value < 0 or (value == 0 and not allow_zero):
        fail(section, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_int(section: str, key: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(section, key, f"must be a whole number >= {minimum}, got {shown(value)}")


def check_path(section: str, key: str, value: Any) -> Path:
    """A path setting as a :class:`Path` (``~`` expanded); refused unless it is text naming a path."""
    if not isinstance(value, (str, os.PathLike)):
        fail(section, key, f"must be a path (text), got {shown(value)}")
    if "\x00" in os.fspath(value):
        fail(section, key, f"{shown(value)} holds a NUL character; no path does")
    try:
        return Path(value).expanduser()
    except RuntimeError as exc:  # ~name of a user this machine does not know
        fail(section, key, f"{shown(value)}: {exc}")


def check_text_list(section: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of texts (a TOML array of strings) as a tuple; refused for anything else."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        fail(section, key, f"must be a list of texts, got {shown(value)}")
    return tuple(value)


def sub_table(cls: type, value: Any, section: str) -> Any:
    """A sub-table (``[node.tls]``) as its dataclass: built from its TOML table (unknown keys
    refused), kept when it is one already, refused when it is anything else."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{section}] must be a table of settings, got {shown(value)}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"[{section}] unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    try:
        return cls(**value)
    except TypeError as exc:
        raise ConfigError(f"[{section}] {exc}") from None


def optional_path(section: str, key: str, value: Any) -> Path | None:
    """A path setting that may be left out: None when unset or blank, else :func:`check_path`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return check_path(section, key, value)
