"""The checks every configuration section uses, each written once; an error names the section and
key and says what is allowed.

Sections call them from ``__post_init__``: :func:`check_bool`, :func:`check_bind_host`,
:func:`check_port`, :func:`check_int`, :func:`check_positive`, :func:`check_text`,
:func:`check_ae_title`, :func:`check_paths` (path keys), :func:`both_or_neither` and
:func:`not_both` (keys that go together or exclude each other). :func:`build_table` turns a TOML
table into its dataclass (an unknown key is an error, never a silent default), for sections and
sub-tables (``[node.tls]``) alike. :func:`rename_keys` keeps an older file working: a renamed key
is read under its new name with one warning naming the new key.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from medblip_dicom.errors import MedblipError

logger = logging.getLogger(__name__)

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


def check_bool(section: str, key: str, value: Any) -> None:
    """A switch: TOML ``true`` or ``false`` (not 1, "yes" or a date)."""
    if not isinstance(value, bool):
        fail(section, key, f"must be true or false, got {shown(value)}")


def check_text(section: str, key: str, value: Any, what: str = "a text") -> None:
    """A text setting (``what`` says which kind, e.g. "the name of an environment variable")."""
    if not isinstance(value, str):
        fail(section, key, f"must be {what}, got {shown(value)}")


def check_bind_host(section: str, key: str, value: Any) -> None:
    """The address a listener binds to: a non-empty text (``127.0.0.1``, ``::1``, ``0.0.0.0``, a name)."""
    if not isinstance(value, str) or not value:
        fail(section, key, f"must be an address to bind to, got {shown(value)}")


def check_port(section: str, key: str, value: Any, *, zero: str = "", what: str = "") -> None:
    """A TCP port, 1..65535; `zero` names what 0 means where 0 is allowed ("off", "any free port");
    `what` names the port inside a longer value (``destination``'s "port")."""
    lowest = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 65535:
        fail(section, key, f"{what + ' ' if what else ''}must be {f'0 ({zero}) or ' if zero else ''}1..65535, "
                           f"got {shown(value)}")


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and value != ""


def both_or_neither(section: str, key: str, first: Any, second: Any, what: str) -> None:
    """Two settings that only work together (a certificate and its key): both set, or neither.

    Unset is None, "" or False. The message says ``set both WHAT, or neither``.
    """
    if _is_set(first) != _is_set(second):
        fail(section, key, f"set both {what}, or neither")


def not_both(section: str, key: str, first: Any, second: Any, what: str) -> None:
    """Two settings that exclude each other (a password file or a password variable): at most one set."""
    if _is_set(first) and _is_set(second):
        fail(section, key, f"set {what}, not both")


def check_paths(instance: Any, section: str, *names: str) -> None:
    """Turn the path settings `names` of a frozen dataclass into :class:`Path` (or None when left
    out), each checked by :func:`optional_path`."""
    for name in names:
        object.__setattr__(instance, name, optional_path(section, name, getattr(instance, name)))


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


def build_table(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """The dataclass `cls` from a TOML table: an unknown key is refused naming the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"[{section}] unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as exc:  # a wrong type that the section's checks did not name
        raise ConfigError(f"[{section}] {exc}") from None


def sub_table(cls: type, value: Any, section: str) -> Any:
    """A sub-table (``[node.tls]``) as its dataclass: built from its TOML table (:func:`build_table`),
    kept when it is one already, refused when it is anything else."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{section}] must be a table of settings, got {shown(value)}")
    return build_table(cls, value, section)


@dataclass(frozen=True)
class Renamed:
    """A key that moved: ``old`` and ``new`` as (table, key), the table dotted for a sub-table."""

    old: tuple[str, str]
    new: tuple[str, str]

    def describe(self) -> tuple[str, str]:
        """The old and the new spelling as a file writes them: ``[dicomweb] cert``, ``[dicomweb.tls] cert``."""
        return f"[{self.old[0]}] {self.old[1]}", f"[{self.new[0]}] {self.new[1]}"


def _table(data: dict[str, Any], dotted: str, *, create: bool = False) -> dict[str, Any] | None:
    """The (sub-)table at ``a.b`` of `data`: None when absent (made, with `create`); a non-table there
    is refused as :func:`sub_table` refuses it."""
    node = data
    for part in dotted.split("."):
        if part not in node and create:
            node[part] = {}
        node = node.get(part)
        if node is None:
            return None
        if not isinstance(node, dict):
            raise ConfigError(f"[{dotted}] must be a table of settings, got {shown(node)}")
    return node


def rename_keys(data: Mapping[str, Any], renames: Sequence[Renamed], source: str) -> dict[str, Any]:
    """A copy of `data` (a parsed file) with every renamed key moved to its new place, each move
    logged as a warning that names the new key; a file that sets both spellings is refused.

    The old spelling keeps working so that an upgrade never stops a service that ran the day
    before; the warning says what to write instead.
    """
    out = copy.deepcopy(dict(data))  # a parsed TOML document: tables, lists and scalars
    for rename in renames:
        old_table = _table(out, rename.old[0])
        if old_table is None or rename.old[1] not in old_table:
            continue
        old, new = rename.describe()
        new_table = _table(out, rename.new[0], create=True)
        assert new_table is not None
        if rename.new[1] in new_table:
            raise ConfigError(f"{old} and {new} are one setting: keep {new} only")
        new_table[rename.new[1]] = old_table.pop(rename.old[1])
        logger.warning("%s: %s is now %s; the old name is still read, write %s instead", source, old, new, new)
    return out


def optional_path(section: str, key: str, value: Any) -> Path | None:
    """A path setting that may be left out: None when unset or blank, else :func:`check_path`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return check_path(section, key, value)
