"""The ``medblip`` command: the parser with every subcommand, and :func:`main`.

Heavy libraries (torch, transformers, highdicom, pynetdicom) are imported only inside the
subcommand that needs them, so ``medblip --help`` answers at once. Exit codes and the meaning of
``-q`` / ``-v`` are the same for every subcommand (:mod:`medblip_dicom.apps.common`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from medblip_dicom import __version__
from medblip_dicom.apps import batch, caption, deid, doctor, pull, quickstart, review, show_sr, training, watch_node
from medblip_dicom.apps.common import EXIT_INTERRUPTED, EXIT_USAGE, configure_logging


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medblip`` with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="medblip",
        description="Caption radiology DICOM images with a BLIP model and write DICOM Structured Reports "
        "(machine-generated, UNVERIFIED, not for diagnostic use). Exit status: 0 done, 1 some inputs or "
        "checks failed or a service stopped on an error, 2 the command could not run as given.",
    )
    parser.add_argument("--version", action="version", version=f"medblip-dicom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    caption.add_command(sub)
    batch.add_command(sub)
    watch_node.add_commands(sub)
    pull.add_command(sub)
    review.add_command(sub)
    deid.add_command(sub)
    training.add_commands(sub)
    show_sr.add_command(sub)
    doctor.add_command(sub)
    quickstart.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medblip`` command; returns the process exit status."""
    return _main(argv)[0]


def _main(argv: Sequence[str] | None) -> tuple[int, bool]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE, True
    configure_logging(args, service=getattr(args, "service", False))
    try:
        return int(args.func(args)), bool(getattr(args, "quick_exit", False))
    except KeyboardInterrupt:
        print("medblip: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED, False


def run() -> None:
    """The console script and ``python -m medblip_dicom``: :func:`main`, then leave the process.

    Tearing down an interpreter that holds torch and a loaded model takes seconds (freeing the
    weights, finalising every module): about 2 s of a one-file ``medblip caption`` on 2 cores. The
    one-shot commands (caption, show-sr, doctor, status) have written, fsynced and closed
    everything by the time they return, so they flush their output and logs and end the process at
    once with ``os._exit``; the services and training leave the ordinary way (their exit handlers
    stop child processes and distributed groups).
    """
    rc, quick = _main(None)
    if quick:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    run()
