"""``medblip quickstart``: the whole path on one machine, offline, in about a minute.

1. Writes the synthetic training set (:mod:`medblip_dicom.training.synthetic`) in the ROCO layout.
2. Builds a small BLIP from a config and trains it from scratch on that set (cached: a second run
   reuses ``OUT/run/best`` if it is there).
3. Captions real DICOM images shipped with pydicom and pydicom-data (a chest X-ray, a CT, an MR)
   with the trained model through :func:`medblip_dicom.caption_dicoms`, writes their SRs and a
   preview PNG of each picture with its caption.
4. Shows each SR as a tree and says where everything is, and how to use a real BLIP checkpoint.

The demo model only knows the synthetic drawings: its captions of real images show the plumbing
working, not radiology. Progress goes through the `say` callback (the CLI prints it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, packages_present, say_error

#: The real DICOM images the quickstart captions: (pydicom test file, what it is).
SAMPLES = (
    ("RG1_UNCI.dcm", "chest X-ray (CR, MONOCHROME1), from pydicom-data"),
    ("CT_small.dcm", "CT slice, from pydicom"),
    ("MR_small.dcm", "MR slice, from pydicom"),
)


@dataclass
class QuickstartResult:
    """Where the quickstart put things."""

    out: Path
    model: Path
    reports: list[Path] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)
    trained: bool = False


def run_quickstart(out: str | os.PathLike[str], *, epochs: int = 30, say: Callable[[str], None] = lambda s: None,
                   progress: bool = True) -> QuickstartResult:
    """Run the quickstart into `out` (see the module docstring)."""
    from pydicom.data import get_testdata_file

    from medblip_dicom.api import CaptionFailure, caption_dicoms
    from medblip_dicom.preview import write_preview
    from medblip_dicom.reading import read_image
    from medblip_dicom.apps.show_sr import render

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    best = out / "run" / "best"
    result = QuickstartResult(out=out, model=best)
    if (best / "medblip_provenance.json").is_file():
        say(f"1-2/4 using the demo model trained earlier: {best}")
    else:
        result.trained = True
        _train(out, epochs, say, progress)

    say("3/4 captioning real DICOM images with it")
    sources, labels = [], {}
    for name, what in SAMPLES:
        path = get_testdata_file(name)
        if path is None:
            say(f"    (skipping {name}, the {what}: install pydicom-data to get it)")
            continue
        sources.append(str(path))
        labels[str(path)] = f"{name}: {what}"
    reports = out / "reports"
    import pydicom

    for outcome in caption_dicoms(sources, model=best, output_dir=reports, device="cpu", dtype="float32"):
        if isinstance(outcome, CaptionFailure):
            say(f"    FAILED {outcome.error}")
            continue
        preview = write_preview(read_image(outcome.source).dataset, outcome.caption, out / "previews",
                                frame=outcome.frame_index)
        result.reports.append(outcome.sr_path)
        result.previews.append(preview)
        say(f"\n--- {labels[outcome.source]}")
        say(render(pydicom.dcmread(outcome.sr_path)))

    say("\n4/4 done. Everything is under " + str(out) + ":")
    say(f"    training data   {out / 'data'} (synthetic, original ROCO layout: captions.txt, licences.txt, images/)")
    say(f"    training run    {out / 'run'} (metrics.jsonl, curves.png, checkpoints/)")
    say(f"    model           {best}")
    say(f"    SRs             {reports}")
    say(f"    previews        {out / 'previews'}")
    say("The demo model only learned the synthetic drawings; its captions of real images are not meaningful.")
    say("To use a real BLIP checkpoint instead:")
    say(f"    medblip caption {sources[0] if sources else 'FILE.dcm'} --model /path/to/blip-model-dir --out reports/")
    say("    (a save_pretrained directory, a hub id already in the Hugging Face cache such as")
    say("     Salesforce/blip-image-captioning-base, or RUN_DIR/best from `medblip train` on ROCO)")
    return result


def _train(out: Path, epochs: int, say: Callable[[str], None], progress: bool) -> None:
    from medblip_dicom.training.demo_model import build_blip_model
    from medblip_dicom.training.config import TrainConfig
    from medblip_dicom.training.synthetic import write_dataset
    from medblip_dicom.training.trainer import train

    data = out / "data"
    if not (data / "data" / "train" / "radiology" / "captions.txt").is_file():
        say(f"1/4 writing the synthetic training set to {data}")
        write_dataset(data, layout="roco")
    else:
        say(f"1/4 reusing the synthetic training set in {data}")
    say("2/4 building a small BLIP from a config and training it on the CPU (about a minute)")
    base = build_blip_model(out / "base-model", size="small", seed=0)
    config = TrainConfig(data=str(data), base_model=str(base), out=str(out / "run"), epochs=epochs, batch_size=16,
                         lr=2e-3, seed=0, device="cpu", max_length=24, keep_last=1, model_name="medblip-quickstart-demo")
    state = train(config, progress=progress)
    say(f"    validation BLEU-4 {state['best_metric']:.3f} (epoch {state['best_epoch']})")


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``medblip quickstart``."""
    quick = sub.add_parser("quickstart", help="train a demo model offline and caption real DICOM images with it",
                           description="Offline end to end: generate a data set, train a small BLIP (about a "
                           "minute on a CPU, cached), caption real DICOM images, write and show the SRs.",
                           epilog="examples:\n  medblip quickstart\n  medblip quickstart --out /tmp/mq",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    quick.add_argument("--out", type=Path, default=Path("medblip-quickstart"),
                       help="where everything goes (default ./medblip-quickstart)")
    quick.add_argument("--epochs", type=int, default=30, help="training epochs of the demo model (default 30)")
    add_verbosity(quick)
    quick.set_defaults(func=cmd_quickstart)


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Run ``medblip quickstart``."""
    from medblip_dicom.errors import MedblipError

    if not packages_present("quickstart", "quickstart"):
        return EXIT_USAGE
    try:
        run_quickstart(args.out, epochs=args.epochs, say=print, progress=not args.quiet)
    except (MedblipError, OSError) as exc:
        say_error("quickstart", exc)
        return EXIT_FAILED
    return EXIT_OK
