"""Log hygiene: other libraries' messages reach a log without the DICOM values they quote.

Our own loggers (``medblip_dicom.*``) log job numbers, UIDs, states and timings, never a
patient's name or ID. Other libraries' messages are not ours to shape, and some quote values:
highdicom warns ``The string "DOE JOHN" is unlikely to represent the intended person name``,
pydicom warns ``Invalid value for VR PN: 'DOE JOHN'``, pynetdicom's debug dumps print every element
as ``(0010,0010) PN [DOE JOHN]``, and an exception's text may carry any of these into a log line
or a reason.

The rule is an allow-list of *sources*, not a deny-list of libraries: a record from our own loggers
passes as it is (only the text of an exception it carries is redacted); every other record (any
third-party logger, and every warning, which :func:`protect_logs` sends to the ``py.warnings``
logger) is redacted by :func:`redact`. A deny-list of libraries known to quote values would miss
the next library, or the next version of one we know; the allow-list fails safe: a new library's
message loses its quoted values and never leaks them.

:func:`redact` keeps a message's shape and replaces its values, line by line:

- a DICOM element line (starting with a tag, ``(gggg,eeee)``) whose quoted or bracketed value follows
  only a keyword or a VR keeps those words and what follows the value, which is withheld; any
  other element line (a bare value may hide among its words) keeps the tag only;
- everything from the first to the last quote character (``'`` or ``"``) of a line becomes
  ``'<value withheld>'`` (first to last, so a value that holds quotes itself is withheld whole),
  unless what was quoted is a word of the standard, which identifies no one: a UID, an attribute
  keyword, a registered UID's name (``'Explicit VR Little Endian'``), a VR or ``'DICM'``.

A value a library prints neither quoted nor in an element dump is not recognised; the attack tests
scan every log line of the services for a corpus of hostile names to catch such a message.

Library code never configures logging: :func:`protect_logs` is called by the ``medblip`` command
(and by the service's child processes and the Ray workers of ``medblip batch``). It installs a
``LogRecord`` factory, so that every handler (the command's, uvicorn's, Ray's, logging's last
resort) gets the redacted record, and a :func:`warnings.showwarning` hook that logs warnings as
``py.warnings`` records.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TextIO

#: What replaces a withheld value.
WITHHELD = "'<value withheld>'"

#: Loggers whose messages we write ourselves (and so carry no patient data): passed as they are.
TRUSTED_LOGGERS = ("medblip_dicom",)

_TAG_LINE = re.compile(r"^(\s*\(\s*[0-9A-Fa-f]{4}\s*,\s*[0-9A-Fa-f]{4}\s*\))(.*)$")
_UID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*)){3,}")

_install_lock = threading.Lock()
_MARK = "_medblip_redacting"


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """Words of the standard: attribute keywords, the names of registered UIDs, the VRs, the Part 10 prefix."""
    from pydicom.datadict import keyword_dict
    from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]
    from pydicom.valuerep import VR

    return frozenset(keyword_dict) | frozenset(str(entry[0]) for entry in UID_dictionary.values()) \
        | frozenset(vr.value for vr in VR) | {"DICM"}  # (the Part 10 file prefix)


def _harmless(quoted: str) -> bool:
    """A quoted text that identifies no one: a UID, a DICOM keyword, a registered UID's name, a VR."""
    text = quoted.strip()
    return bool(text) and (_UID.fullmatch(text) is not None or text in _vocabulary())


def redact_line(line: str) -> str:
    """One line with its values withheld (see the module docstring)."""
    tag = _TAG_LINE.match(line)
    if tag is not None and tag.group(2).strip():
        # An element: its value is quoted ('...'), bracketed ([...], pynetdicom's dumps) or bare.
        # A quoted or bracketed value after nothing but a keyword or VR is withheld and the words
        # around it kept; otherwise a bare value may be among the words, so only the tag is kept.
        rest = tag.group(2)
        first = min((i for i in (rest.find("'"), rest.find('"'), rest.find("[")) if i >= 0), default=-1)
        last = max(rest.rfind("'"), rest.rfind('"'), rest.rfind("]"))
        words = rest[:first].replace(":", " ").split() if first >= 0 else []
        if first < 0 or last <= first or not all(word in _vocabulary() for word in words):
            return f"{tag.group(1)} {WITHHELD}"
        return f"{tag.group(1)}{rest[:first]}{WITHHELD}{rest[last + 1:]}"
    first = min((i for i in (line.find("'"), line.find('"')) if i >= 0), default=-1)
    last = max(line.rfind("'"), line.rfind('"'))
    if first < 0 or last <= first or _harmless(line[first + 1:last]):
        return line
    return line[:first] + WITHHELD + line[last + 1:]


def redact(text: str) -> str:
    """`text` with every value a library may have quoted replaced by ``'<value withheld>'``, line by line.

    For messages whose shape we do not control: third-party log records and warnings, and the text
    of a third-party exception before it becomes a reason, a log line or a reason file.
    """
    if "'" not in text and '"' not in text and "(" not in text:
        return text
    return "\n".join(redact_line(line) for line in text.split("\n"))


def format_exception(exc_type: type[BaseException], exc: BaseException, tb: Any) -> str:
    """A traceback as :func:`traceback.format_exception` writes it, with the exception messages
    (which may quote values) redacted and the frames (our code and the libraries') kept."""
    lines: list[str] = []

    def emit(te: traceback.TracebackException) -> None:
        if te.__cause__ is not None:
            emit(te.__cause__)
            lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif te.__context__ is not None and not te.__suppress_context__:
            emit(te.__context__)
            lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
        if te.stack:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(te.stack.format())
        lines.extend(redact(line) for line in te.format_exception_only())

    emit(traceback.TracebackException(exc_type, exc, tb))
    return "".join(lines).rstrip("\n")


def is_trusted(logger_name: str) -> bool:
    """True for our own loggers (``medblip_dicom`` and its children)."""
    return any(logger_name == name or logger_name.startswith(name + ".") for name in TRUSTED_LOGGERS)


def _redacted_arg(value: Any) -> Any:
    return redact(str(value)) if isinstance(value, BaseException) else value


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact `record` in place (see the module docstring) and return it."""
    if is_trusted(record.name or ""):
        if isinstance(record.args, Mapping):
            record.args = {k: _redacted_arg(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple) and any(isinstance(a, BaseException) for a in record.args):
            record.args = tuple(_redacted_arg(a) for a in record.args)
    else:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record still must not leak its arguments
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[0] is not None:
        # exc_text is what every Formatter prints; exc_info would let a formatter print the raw text again
        record.exc_text, record.exc_info = format_exception(*record.exc_info), None
    return record


def _redacting_factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A LogRecord factory: `previous` makes the record, :func:`scrub_record` redacts it."""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub_record(previous(*args, **kwargs))

    setattr(factory, _MARK, True)
    return factory


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """The :func:`warnings.showwarning` hook: a warning becomes a ``py.warnings`` record (redacted)."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    if file is not None:  # a caller that names a file gets the text there, redacted as well
        try:
            file.write(redact(text))
        except OSError:
            pass
        return
    logging.getLogger("py.warnings").warning("%s", text.rstrip("\n"))


def protect_logs() -> None:
    """Install the redaction for this process (idempotent): the record factory and the warnings hook.

    Call it where logging is configured: the ``medblip`` command, a service's child process, a Ray
    worker. It adds no handler and changes no level.
    """
    with _install_lock:
        current = logging.getLogRecordFactory()
        if not getattr(current, _MARK, False):  # (a factory set over ours since is wrapped in turn)
            logging.setLogRecordFactory(_redacting_factory(current))
        if warnings.showwarning is not show_warning:
            warnings.showwarning = show_warning


def protected() -> bool:
    """True when :func:`protect_logs` is in force in this process."""
    return bool(getattr(logging.getLogRecordFactory(), _MARK, False)) and warnings.showwarning is show_warning
