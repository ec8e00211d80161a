"""``medblip train`` and ``medblip evaluate``: thin handlers over :mod:`medblip_dicom.training`.

Module-level imports stay light (argparse only), so ``medblip --help`` stays fast. Both check that
the ``[train]`` extra is installed before anything is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from medblip_dicom.apps.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_verbosity, packages_present, say_error

TRAIN_EXAMPLE = """\
examples:
  medblip train --data ~/roco --base-model Salesforce/blip-image-captioning-base --out runs/roco1 \\
      --epochs 5 --batch-size 16 --lr 5e-5
  medblip train --data ~/roco --base-model runs/roco1/best --out runs/roco1 --resume
  torchrun --nproc_per_node 4 -m medblip_dicom train --data ~/roco --base-model M --out runs/ddp

--data takes a folder holding data/ (original ROCO layout) or all_data/ (Kaggle layout), or a
.csv/.jsonl manifest of image,caption pairs (DICOM images allowed). The run writes config.json,
data/ (dropped-row reports), metrics.jsonl, checkpoints/, best/ (the model to caption with) and
curves.png into --out. Options may also come from a TOML file (--config), flags win.
"""

EVALUATE_EXAMPLE = """\
examples:
  medblip evaluate --model runs/roco1/best --data ~/roco --split test
  medblip evaluate --model runs/roco1/best --data pairs.csv --out eval/

Writes predictions.csv (id, reference, hypothesis) and metrics.json into --out (default:
MODEL/evaluation/SPLIT) and prints the metrics as JSON on the last line.
"""


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``train`` and ``evaluate`` on the ``medblip`` parser."""
    train = sub.add_parser("train", help="fine-tune BLIP on ROCO or your own image-caption pairs",
                           description="Fine-tune a BLIP captioning model.", epilog=TRAIN_EXAMPLE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--data", help="ROCO root (data/ or all_data/) or a .csv/.jsonl manifest")
    train.add_argument("--base-model", dest="base_model", help="BLIP model directory or cached hub id to start from")
    train.add_argument("--out", help="run directory")
    train.add_argument("--config", type=Path, default=None, help="TOML file with training options")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", dest="batch_size", type=int)
    train.add_argument("--grad-accum", dest="grad_accum", type=int, help="gradient accumulation steps")
    train.add_argument("--lr", type=float, help="peak learning rate (AdamW, warmup then cosine decay)")
    train.add_argument("--weight-decay", dest="weight_decay", type=float)
    train.add_argument("--warmup-ratio", dest="warmup_ratio", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"])
    train.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"])
    train.add_argument("--freeze-vision", dest="freeze_vision", action="store_true", default=None,
                       help="train only the text decoder")
    train.add_argument("--subset", help="radiology (default) or non-radiology")
    train.add_argument("--max-length", dest="max_length", type=int, help="caption length limit in tokens")
    train.add_argument("--save-every", dest="save_every", type=int, help="also checkpoint every N optimizer steps")
    train.add_argument("--keep-last", dest="keep_last", type=int, help="checkpoints to keep (default 2)")
    train.add_argument("--max-train-samples", dest="max_train_samples", type=int)
    train.add_argument("--max-eval-samples", dest="max_eval_samples", type=int)
    train.add_argument("--num-workers", dest="num_workers", type=int, help="data loader worker processes")
    train.add_argument("--no-validate-files", dest="validate_files", action="store_false", default=None,
                       help="skip the image check (not recommended)")
    train.add_argument("--model-name", dest="model_name", help="name recorded in the exported model and every SR")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    add_verbosity(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="caption a split and report BLEU",
                        description="Caption a data split with a model and score it with BLEU.",
                        epilog=EVALUATE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", "-m", required=True, help="model directory or cached hub id")
    ev.add_argument("--data", required=True, help="ROCO root or manifest")
    ev.add_argument("--split", default="test", help="train, validation or test (default test)")
    ev.add_argument("--subset", default="radiology")
    ev.add_argument("--out", type=Path, default=None, help="folder for predictions.csv and metrics.json")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ev.add_argument("--num-beams", type=int, default=3)
    ev.add_argument("--max-new-tokens", type=int, default=60)
    ev.add_argument("--max-samples", type=int, default=None)
    add_verbosity(ev)
    ev.set_defaults(func=cmd_evaluate)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``medblip train``."""
    if not packages_present("train", "train"):
        return EXIT_USAGE
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.training.config import TrainConfig
    from medblip_dicom.training.trainer import train

    names = ("data", "base_model", "out", "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_ratio",
             "seed", "device", "precision", "freeze_vision", "subset", "max_length", "save_every", "keep_last",
             "max_train_samples", "max_eval_samples", "num_workers", "validate_files", "model_name")
    try:
        config = TrainConfig.from_sources(args.config, {n: getattr(args, n) for n in names})
    except (ValueError, OSError) as exc:
        say_error("train", exc)
        return EXIT_USAGE
    try:
        state = train(config, resume=args.resume, progress=not args.quiet)
    except (MedblipError, ValueError, OSError) as exc:
        say_error("train", exc)
        return EXIT_FAILED
    best = Path(config.out) / "best"
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return EXIT_OK
    print(f"best validation BLEU-4 {state['best_metric']:.4f} at epoch {state['best_epoch']}; model in {best}",
          file=sys.stderr)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``medblip evaluate``: exit 2 when the model or data cannot be loaded, 1 when scoring failed."""
    if not packages_present("evaluate", "train"):
        return EXIT_USAGE
    from medblip_dicom.captioner import Captioner
    from medblip_dicom.errors import MedblipError
    from medblip_dicom.generation import GenerationSettings
    from medblip_dicom.training.evaluation import evaluate_model
    from medblip_dicom.training.records import load_records, normalise_split
    from medblip_dicom.training.validation import validate_records

    try:
        split = normalise_split(args.split)
        settings = GenerationSettings(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, min_new_tokens=1)
        captioner = Captioner.load(args.model, device=args.device, dtype=args.dtype, settings=settings)
        records = load_records(args.data, split, args.subset)
    except (MedblipError, ValueError, OSError) as exc:
        say_error("evaluate", exc)
        return EXIT_USAGE
    try:
        if args.max_samples:
            records = records[: args.max_samples]
        report = validate_records(records)
        if report.dropped:
            say_error("evaluate", f"skipped {len(report.dropped)} unusable rows: "
                      f"{ {k: v for k, v in report.counts.items() if k not in ('kept', 'dropped') and v} }")
        out = args.out or Path(args.model) / "evaluation" / split
        metrics = evaluate_model(captioner, report.kept, out, batch_size=args.batch_size, progress=not args.quiet)
    except (MedblipError, ValueError, OSError) as exc:
        say_error("evaluate", exc)
        return EXIT_FAILED
    print(f"predictions and metrics in {out}", file=sys.stderr)
    print(json.dumps(metrics))
    return EXIT_OK
