"""What every subcommand shares: exit codes, ``-q`` / ``-v``, logging set-up and one-line errors.

Exit codes, the same for every subcommand:

- 0: everything asked for was done.
- 1: the command ran but not everything succeeded: some inputs failed, a check failed, a service
  stopped on an error, or a runtime error (a disk, a network, a port) stopped it.
- 2: the command cannot run as given: a bad flag or configuration value, a model that does not
  load, a missing package. Nothing was done.
- 130: interrupted (Ctrl-C).

``-q`` / ``--quiet`` means warnings and errors only, no progress bars; ``-v`` / ``--verbose``
means debug logging. Without either, commands show progress bars and warnings, and the
long-running services also log their work (job numbers, UIDs, states, timings) at INFO.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: The optional parts of the install: which extra brings which packages (import name, package name).
EXTRAS = {
    "train": (("accelerate", "accelerate"), ("nltk", "nltk"), ("matplotlib", "matplotlib"), ("pandas", "pandas"),
              ("rouge_score", "rouge-score"), ("pycocoevalcap", "pycocoevalcap"), ("peft", "peft")),
    "quickstart": (("accelerate", "accelerate"), ("nltk", "nltk"), ("matplotlib", "matplotlib"),
                   ("data_store", "pydicom-data")),
    "deid": (("deid", "deid"),),
    "review": (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("jinja2", "jinja2"), ("multipart", "python-multipart"),
               ("argon2", "argon2-cffi")),
}


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``-q`` and ``-v`` with the one meaning they have in every subcommand (module docstring)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only; no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def configure_logging(args: argparse.Namespace, *, service: bool = False) -> None:
    """Set up logging for a subcommand: library code only logs, the application decides where to.

    Every record and warning of another library is redacted (:mod:`medblip_dicom.logsafety`): logs
    hold job numbers, UIDs, states and timings, never a value a library quoted from a data set.
    """
    from medblip_dicom.logsafety import protect_logs

    # Before anything logs: other libraries' records and every warning lose the values they quote.
    protect_logs()
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    level = logging.DEBUG if verbose else logging.WARNING if quiet or not service else logging.INFO
    if not logging.getLogger().handlers:
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
        if getattr(args, "log_format", "text") == "json":
            from medblip_dicom.logjson import JsonFormatter

            logging.getLogger().handlers[0].setFormatter(JsonFormatter())
    logging.getLogger("medblip_dicom").setLevel(level)
    # pynetdicom's INFO/DEBUG lines describe every PDU; keep them for --verbose only.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        # transformers' own warnings and progress bars are noise on a command line.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def say_error(command: str, error: BaseException | str) -> None:
    """One line on stderr: ``medblip COMMAND: what went wrong``."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"medblip {command}: {text}", file=sys.stderr)


def missing_packages(extra: str | None = None, modules: Sequence[str] = ()) -> str | None:
    """None when every package of `extra` (and `modules`) imports, else the one line saying what to install."""
    wanted = [*(EXTRAS.get(extra, ()) if extra else ()), *((m, m) for m in modules)]
    missing = []
    for module, package in wanted:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if not missing:
        return None
    names = ", ".join(missing)
    if extra is None:
        return f"{names} is not installed; reinstall medblip-dicom (pip install medblip-dicom), it is part of the base install"
    return f"this needs {names}: install the extra with pip install 'medblip-dicom[{extra}]' (or -e '.[{extra}]' in a checkout)"


def packages_present(command: str, extra: str | None = None, modules: Sequence[str] = ()) -> bool:
    """True when the packages import; else says which to install (one line) and returns False.

    Subcommands call it first, so a missing package is reported before any model is loaded.
    """
    missing = missing_packages(extra, modules)
    if missing:
        say_error(command, missing)
    return missing is None
