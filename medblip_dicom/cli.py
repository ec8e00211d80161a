"""The ``medblip`` command line: ``medblip caption PATH... --model M --out DIR``.

Heavy libraries (torch, transformers, highdicom) are imported only inside the subcommand that
needs them, so ``medblip --help`` answers at once. Errors become one line on stderr and a
non-zero exit status: 1 when some inputs failed, 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from medblip_dicom import __version__

logger = logging.getLogger("medblip_dicom.cli")

EXIT_OK = 0
EXIT_FAILED_INPUTS = 1
EXIT_USAGE = 2

CAPTION_EXAMPLE = """\
examples:
  medblip caption chest.dcm --model ./my-blip-model --out reports/
  medblip caption /data/study1 /data/study2 --model ./my-blip-model --out reports/ --batch-size 16
  medblip caption cine.dcm --model Salesforce/blip-image-captioning-base --frame 0 --num-beams 1

Folders are searched recursively (hidden files are ignored). Non-image DICOM found in a folder
(SR, presentation states, DICOMDIR, ...) is reported as skipped; a file named on the command line
that cannot be captioned counts as failed. Each captioned file prints one line
`SOURCE<TAB>SR-PATH<TAB>CAPTION` on stdout.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medblip`` with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="medblip",
        description="Caption radiology DICOM images with a BLIP model and write DICOM Structured Reports "
        "(machine-generated, UNVERIFIED, not for diagnostic use).",
    )
    parser.add_argument("--version", action="version", version=f"medblip-dicom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cap = sub.add_parser(
        "caption", help="caption DICOM files and write one SR per image",
        description="Caption DICOM images and write one Comprehensive SR per image.",
        epilog=CAPTION_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cap.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    cap.add_argument("--model", "-m", required=True,
                     help="BLIP model directory (save_pretrained: model + processor) or a cached hub id")
    cap.add_argument("--out", "-o", type=Path, default=None,
                     help="folder for the SR files (<SR SOPInstanceUID>.dcm); without it captions are only printed")
    cap.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    cap.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    cap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="compute precision (auto: bf16/fp16 where the device supports it)")
    cap.add_argument("--num-beams", type=int, default=3, help="beam search width; 1 = greedy (default 3)")
    cap.add_argument("--max-new-tokens", type=int, default=60, help="longest caption in tokens (default 60)")
    cap.add_argument("--min-new-tokens", type=int, default=5, help="shortest caption in tokens (default 5)")
    cap.add_argument("--no-repeat-ngram-size", type=int, default=3,
                     help="repetition guard: never repeat an n-gram of this size; 0 = off (default 3)")
    cap.add_argument("--frame", type=int, default=None,
                     help="0-based frame of multi-frame images (default: the middle frame)")
    cap.add_argument("--workers", type=int, default=None, help="threads that read and decode ahead of the model")
    cap.add_argument("--preview", action="store_true",
                     help="also write <source SOPInstanceUID>.png: the windowed image with its caption beneath "
                     "(into --out, or ./previews)")
    _add_verbosity(cap)
    cap.set_defaults(func=cmd_caption)

    from medblip_dicom.integrations.cli import add_commands

    add_commands(sub)

    from medblip_dicom.training.cli import add_commands as add_training_commands

    add_training_commands(sub)

    show = sub.add_parser("show-sr", help="print a Structured Report as a readable tree",
                          description="Print an SR's essentials (caption, model, referenced image) and its content tree.",
                          epilog="example:\n  medblip show-sr reports/2.25.1234.dcm",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("files", nargs="+", metavar="FILE", help="SR files")
    show.set_defaults(func=cmd_show_sr)

    doctor = sub.add_parser("doctor", help="check decoders, device, model cache, DICOM tools and ports",
                            description="Report what this installation can do and what to do about problems.",
                            epilog="examples:\n  medblip doctor\n  medblip doctor --config medblip.toml",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--config", type=Path, default=None, help="service TOML file (for the node's host and port)")
    doctor.add_argument("--host", default=None, help="address the node would bind (default 127.0.0.1)")
    doctor.add_argument("--port", type=int, default=None, help="port the node would listen on (default 11112)")
    doctor.set_defaults(func=cmd_doctor)

    quick = sub.add_parser("quickstart", help="train a demo model offline and caption real DICOM images with it",
                           description="Offline end to end: generate a data set, train a small BLIP (about a "
                           "minute on a CPU, cached), caption real DICOM images, write and show the SRs.",
                           epilog="examples:\n  medblip quickstart\n  medblip quickstart --out /tmp/mq",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    quick.add_argument("--out", type=Path, default=Path("medblip-quickstart"),
                       help="where everything goes (default ./medblip-quickstart)")
    quick.add_argument("--epochs", type=int, default=30, help="training epochs of the demo model (default 30)")
    _add_verbosity(quick)
    quick.set_defaults(func=cmd_quickstart)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bar")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING
    if getattr(args, "quiet", False):
        level = logging.ERROR
    elif getattr(args, "verbose", False):
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "verbose", False):
        # transformers' own warnings and progress bars are noise on a command line.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def iter_inputs(paths: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """Yield ``(path, named)`` for every file under `paths`; `named` is True for files given directly.

    Folders are walked recursively in sorted order; hidden files and folders are skipped.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield os.path.join(root, name), False
        else:
            yield raw, True


def cmd_caption(args: argparse.Namespace) -> int:
    """Run ``medblip caption``."""
    from tqdm import tqdm

    from medblip_dicom.api import CaptionFailure, caption_dicoms, load_captioner
    from medblip_dicom.captioner import GenerationSettings
    from medblip_dicom.errors import MedblipError, NotAnImageError

    try:
        settings = GenerationSettings(
            num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.min_new_tokens, no_repeat_ngram_size=args.no_repeat_ngram_size,
        )
    except ValueError as exc:
        print(f"medblip caption: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.batch_size < 1:
        print("medblip caption: --batch-size must be >= 1", file=sys.stderr)
        return EXIT_USAGE

    inputs = list(iter_inputs(args.paths))
    if not inputs:
        print("medblip caption: no files found under " + " ".join(args.paths), file=sys.stderr)
        return EXIT_USAGE
    named = dict(inputs)
    try:
        captioner = load_captioner(args.model, device=args.device, dtype=args.dtype)
    except MedblipError as exc:
        print(f"medblip caption: {exc}", file=sys.stderr)
        return EXIT_USAGE
    captioner.settings = settings

    started = time.perf_counter()
    done = failed = skipped = 0
    progress = tqdm(total=len(inputs), unit="file", disable=args.quiet or None, file=sys.stderr)
    outcomes = caption_dicoms([p for p, _ in inputs], model=captioner, output_dir=args.out, frame=args.frame,
                              batch_size=args.batch_size, workers=args.workers)
    for outcome in outcomes:
        progress.update(1)
        if isinstance(outcome, CaptionFailure):
            if isinstance(outcome.error, NotAnImageError) and not named.get(outcome.source, True):
                skipped += 1
                progress.write(f"skipped {outcome.error}", file=sys.stderr)
            else:
                failed += 1
                progress.write(f"FAILED {outcome.error}", file=sys.stderr)
            continue
        done += 1
        if args.preview:
            from medblip_dicom.preview import write_preview
            from medblip_dicom.reading import read_image

            write_preview(read_image(outcome.source).dataset, outcome.caption, args.out or Path("previews"),
                          frame=outcome.frame_index)
        print(f"{outcome.source}\t{outcome.sr_path or '-'}\t{outcome.caption}", flush=True)
    progress.close()

    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    where = f"; SRs in {args.out}" if args.out is not None else ""
    print(
        f"captioned {done} of {len(inputs)} files ({failed} failed, {skipped} skipped) in {elapsed:.1f} s, "
        f"{rate:.2f} images/s on {captioner.device} ({str(captioner.dtype).split('.')[-1]}){where}",
        file=sys.stderr,
    )
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


def cmd_show_sr(args: argparse.Namespace) -> int:
    """Run ``medblip show-sr``."""
    import pydicom

    from medblip_dicom.srtree import render

    status = EXIT_OK
    for i, name in enumerate(args.files):
        try:
            text = render(pydicom.dcmread(name))
        except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
            print(f"medblip show-sr: {name}: {exc}", file=sys.stderr)
            status = EXIT_FAILED_INPUTS
            continue
        print(("\n" if i else "") + f"{name}\n{text}")
    return status


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run ``medblip doctor``; exit 1 when a check failed (warnings do not count)."""
    from medblip_dicom.doctor import format_findings, run_checks
    from medblip_dicom.errors import MedblipError

    host, port = "127.0.0.1", 11112
    if args.config is not None:
        try:
            from medblip_dicom.integrations.config import load_config

            node = load_config(args.config).node
            host, port = node.host, node.port
        except MedblipError as exc:
            print(f"medblip doctor: {exc}", file=sys.stderr)
            return EXIT_USAGE
    findings = run_checks(args.host or host, args.port if args.port is not None else port)
    print(format_findings(findings))
    return EXIT_FAILED_INPUTS if any(f.status == "fail" for f in findings) else EXIT_OK


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Run ``medblip quickstart``."""
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.quickstart import run_quickstart

    try:
        run_quickstart(args.out, epochs=args.epochs, say=print, progress=not args.quiet)
    except MedblipError as exc:
        print(f"medblip quickstart: {exc}", file=sys.stderr)
        return EXIT_FAILED_INPUTS
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medblip`` command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _configure_logging(args)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("medblip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
