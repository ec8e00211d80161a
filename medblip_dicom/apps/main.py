"""The ``medblip`` command: the parser with every subcommand, and :func:`main`.

Heavy libraries (torch, transformers, highdicom, pynetdicom) are imported only inside the
subcommand that needs them, so ``medblip --help`` answers at once. Exit codes and the meaning of
``-q`` / ``-v`` are the same for every subcommand (:mod:`medblip_dicom.apps.common`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medblip_dicom import __version__
from medblip_dicom.apps import caption, doctor, quickstart, services, show_sr, training
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
    services.add_commands(sub)
    training.add_commands(sub)
    show_sr.add_command(sub)
    doctor.add_command(sub)
    quickstart.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medblip`` command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    configure_logging(args, service=getattr(args, "service", False))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("medblip: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
