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
  medblip train --data ~/roco --base-model ./medgemma-4b-it --out runs/medgemma --lora-rank 16 --export adapter \\
      --prompt "Describe this radiology image in one sentence." --batch-size 4 --lr 2e-4
  torchrun --nproc_per_node 4 -m medblip_dicom train --data ~/roco --base-model M --out runs/ddp

--data takes a folder holding data/ (original ROCO layout) or all_data/ (Kaggle layout), or a
.csv/.jsonl manifest of image,caption pairs (DICOM images allowed). The run writes config.json,
data/ (dropped-row reports), metrics.jsonl, checkpoints/, best/ (the model to caption with) and
curves.png into --out. Options may also come from a TOML file (--config), flags win. Any family
medblip serves trains (medblip doctor lists them); a vision-language model learns the caption that
follows its prompt (--prompt, default: the base model's, else the standard one). --lora-rank trains
LoRA adapters on a frozen base; --export merged (default) or adapter (base model + adapter).
"""

EVALUATE_EXAMPLE = """\
examples:
  medblip evaluate --model runs/roco1/best --data ~/roco --split test
  medblip evaluate --model runs/roco1/best --data pairs.csv --out eval/ --metrics meteor,bertscore
  medblip evaluate --model runs/smolvlm/best --data ~/roco --split test --out runs/smolvlm/evaluation/test
  medblip evaluate --compare base/evaluation/test/predictions.csv runs/roco1/best/evaluation/test/predictions.csv

Writes predictions.csv (id, reference, hypothesis), scores.csv (every per-image metric and the
modality group), metrics.json (corpus BLEU-1..4, CIDEr-D, ROUGE-1/2/L, ImageCLEF-style BLEU,
sentence BLEU-4, the same per modality, and every metric's definition) and scores.png into --out
(default: MODEL/evaluation/SPLIT) and prints the metrics as JSON on the last line. --metrics adds
optional metrics (meteor, bertscore, bleurt, clipscore): each is computed only when its model or
data is present locally, else metrics.json says why in one line. --compare A B scores two
predictions files on the same references side by side, with paired bootstrap 95% intervals of
B - A (--resamples, --seed); no model is loaded.
"""


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``train`` and ``evaluate`` on the ``medblip`` parser."""
    train = sub.add_parser("train", help="fine-tune BLIP (or another family) on ROCO or your own image-caption pairs",
                           description="Fine-tune a captioning model (BLIP or any family medblip serves).",
                           epilog=TRAIN_EXAMPLE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--data", help="ROCO root (data/ or all_data/) or a .csv/.jsonl manifest")
    train.add_argument("--base-model", dest="base_model", help="model directory or cached hub id to start from")
    train.add_argument("--prompt", help="instruction a vision-language model learns to answer (default: the base "
                       "model's, else the standard one); recorded in the export")
    train.add_argument("--lora-rank", dest="lora_rank", type=int, help="train LoRA adapters of this rank on a frozen "
                       "base (0 = full fine-tuning, the default)")
    train.add_argument("--lora-alpha", dest="lora_alpha", type=int, help="LoRA scaling numerator (default 2 x rank)")
    train.add_argument("--lora-dropout", dest="lora_dropout", type=float)
    train.add_argument("--lora-targets", dest="lora_targets",
                       help="all-linear (default) or module names, comma-separated")
    train.add_argument("--export", choices=["merged", "adapter"], help="a LoRA run's best model: merged weights "
                       "(default) or base model + adapter")
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

    ev = sub.add_parser("evaluate", help="caption a split and score it; or compare two runs",
                        description="Caption a data split with a model and score it (BLEU, ROUGE, CIDEr-D, "
                        "ImageCLEF BLEU, per modality), or compare two predictions files.",
                        epilog=EVALUATE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", "-m", default=None, help="model directory or cached hub id")
    ev.add_argument("--prompt", default=None,
                    help="instruction for a vision-language model (default: its provenance's)")
    ev.add_argument("--data", default=None, help="ROCO root or manifest")
    ev.add_argument("--metrics", default="", help="optional metrics, comma-separated: meteor, bertscore, bleurt, "
                    "clipscore (computed only when their model or data is here)")
    ev.add_argument("--compare", nargs=2, type=Path, default=None, metavar=("RUN_A", "RUN_B"),
                    help="compare two predictions.csv files on the same references")
    ev.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for --compare (default 1000)")
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed for --compare (default 0)")
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
             "max_train_samples", "max_eval_samples", "num_workers", "validate_files", "model_name", "prompt",
             "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "export")
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
    if args.compare is not None:
        return _compare(args)
    if not args.model or not args.data:
        say_error("evaluate", "give --model and --data (or --compare RUN_A RUN_B)")
        return EXIT_USAGE
    from medblip_dicom.training.caption_metrics import OPTIONAL

    optional = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(optional) - set(OPTIONAL))
    if unknown:
        say_error("evaluate", f"--metrics: unknown metric {unknown[0]!r}; choose from {', '.join(OPTIONAL)}")
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
        captioner = Captioner.load(args.model, device=args.device, dtype=args.dtype, settings=settings,
                                   prompt=args.prompt)
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
        metrics = evaluate_model(captioner, report.kept, out, batch_size=args.batch_size, progress=not args.quiet,
                                 optional=optional)
    except (MedblipError, ValueError, OSError) as exc:
        say_error("evaluate", exc)
        return EXIT_FAILED
    print(f"predictions and metrics in {out}", file=sys.stderr)
    print(json.dumps(metrics))
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    """``medblip evaluate --compare RUN_A RUN_B``: the table on stdout, JSON beside B (or in --out)."""
    from medblip_dicom.training.compare import CompareError, compare_runs, format_comparison, read_predictions

    a, b = args.compare
    try:
        result = compare_runs(read_predictions(a), read_predictions(b), resamples=args.resamples, seed=args.seed)
    except (CompareError, ValueError) as exc:
        say_error("evaluate", exc)
        return EXIT_USAGE
    result.update(run_a=str(a), run_b=str(b))
    out = args.out or b.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_comparison(result, a, b))
    print(f"comparison in {out / 'comparison.json'}", file=sys.stderr)
    return EXIT_OK
