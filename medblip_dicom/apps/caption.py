"""``medblip caption PATH... --model M --out DIR``: caption files and folders, one SR per image."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, say_error
from medblip_dicom.apps.options import (
    add_frame, add_generation, add_model, add_selection, batch_size_error, generation_settings, iter_inputs,
    select_config,
)

CAPTION_EXAMPLE = """\
examples:
  medblip caption chest.dcm --model ./my-blip-model --out reports/
  medblip caption /data/study1 /data/study2 --model ./my-blip-model --out reports/ --batch-size 16
  medblip caption cine.dcm --model Salesforce/blip-image-captioning-base --frame 0 --num-beams 1

  medblip caption /data/ct-study --model ./my-blip-model --out reports/ --per-series each
  medblip caption /data/study --model ./my-blip-model --out reports/ --select medblip.toml

Folders are searched recursively (hidden files are ignored). What was given is a complete set: by
default one caption per series (its representative, the middle instance by position; the others
are reported as skipped) and localizers and scouts are skipped; --per-series each captions every
image; --select FILE takes the [select] table (rules, per_series) of a TOML file. Non-image DICOM
found in a folder (SR, presentation states, DICOMDIR, ...) is reported as skipped; a file named on
the command line that cannot be captioned counts as failed. Each captioned file prints one line
`SOURCE<TAB>SR-PATH<TAB>CAPTION` on stdout.

One SOPInstanceUID, one report: a file whose SOPInstanceUID an earlier file had is not captioned
(kind Duplicate, naming the first). The same instance twice is captioned once; a different image
under a SOPInstanceUID already used gets no report and makes the exit status 1.
"""


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``medblip caption``."""
    cap = sub.add_parser(
        "caption", help="caption DICOM files and write one SR per image",
        description="Caption DICOM images and write one Comprehensive SR per image.",
        epilog=CAPTION_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cap.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    add_model(cap)
    cap.add_argument("--out", "-o", type=Path, default=None,
                     help="folder for the SR files (<SR SOPInstanceUID>.dcm); without it captions are only printed")
    add_generation(cap)
    add_frame(cap)
    cap.add_argument("--workers", type=int, default=None, help="threads that read and decode ahead of the model")
    add_selection(cap)
    cap.add_argument("--preview", action="store_true",
                     help="also write <source SOPInstanceUID>.png: the windowed image with its caption beneath "
                     "(into --out, or ./previews)")
    add_verbosity(cap)
    cap.set_defaults(func=cmd_caption, quick_exit=True)


def cmd_caption(args: argparse.Namespace) -> int:
    """Run ``medblip caption``."""
    try:
        settings = generation_settings(args)
    except ValueError as exc:
        say_error("caption", exc)
        return EXIT_USAGE
    if (problem := batch_size_error(args)) is not None:
        say_error("caption", problem)
        return EXIT_USAGE
    inputs = list(iter_inputs(args.paths))
    if not inputs:
        say_error("caption", "no files found under " + " ".join(args.paths))
        return EXIT_USAGE
    try:
        select = select_config(args)
    except (ValueError, OSError) as exc:
        say_error("caption", exc)
        return EXIT_USAGE

    from tqdm import tqdm

    from medblip_dicom.api import CaptionFailure, CaptionSkipped, caption_dicoms, load_captioner
    from medblip_dicom.errors import MedblipError, NotAnImageError, SourceError
    from medblip_dicom.logsafety import redact

    named = dict(inputs)
    try:
        captioner = load_captioner(args.model, device=args.device, dtype=args.dtype, prompt=args.prompt)
    except MedblipError as exc:
        say_error("caption", exc)
        return EXIT_USAGE
    captioner.settings = settings

    started = time.perf_counter()
    done = failed = skipped = conflicts = 0
    progress = tqdm(total=len(inputs), unit="file", disable=args.quiet or None, file=sys.stderr)
    outcomes = caption_dicoms([p for p, _ in inputs], model=captioner, output_dir=args.out, frame=args.frame,
                              batch_size=args.batch_size, workers=args.workers, select=select)
    for outcome in outcomes:
        progress.update(1)
        if isinstance(outcome, CaptionSkipped):
            skipped += 1
            conflicts += outcome.conflict
            progress.write(f"skipped {outcome.source}: {outcome.reason}", file=sys.stderr)
            continue
        if isinstance(outcome, CaptionFailure):
            error = outcome.error
            # a library's words inside a reason may quote a value of the data set: withheld on the terminal too
            text = f"{error.source}: {redact(error.reason)}" if isinstance(error, SourceError) else redact(str(error))
            if isinstance(error, NotAnImageError) and not named.get(outcome.source, True):
                skipped += 1
                progress.write(f"skipped {text}", file=sys.stderr)
            else:
                failed += 1
                progress.write(f"FAILED {text}", file=sys.stderr)
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
    clash = f", {conflicts} with a SOPInstanceUID already used by a different image" if conflicts else ""
    print(
        f"captioned {done} of {len(inputs)} files ({failed} failed, {skipped} skipped{clash}) in {elapsed:.1f} s, "
        f"{rate:.2f} images/s on {captioner.device} ({str(captioner.dtype).split('.')[-1]}){where}",
        file=sys.stderr,
    )
    return EXIT_FAILED if failed or conflicts else EXIT_OK
