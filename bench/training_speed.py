"""Training throughput: our trainer against a loop written the original notebook's way.

Same model (a BLIP built from a config, random weights), same images, same real ROCO captions
(so caption lengths vary as in ROCO), same batch size, one epoch each, each contender in its own
process so that its peak memory (max RSS) is its own:

(a) original: a Dataset that runs the processor per item with ``padding="max_length"`` (the
    model's maximum: 512 tokens for BLIP-base), ``labels=input_ids`` (padding not masked), fp32, a plain AdamW loop;
(b) ours: ``medblip_dicom.training.trainer.train`` (pads to the longest caption in the batch,
    truncates at 96 tokens, masks padding; precision ``auto``: bf16/fp16 on GPUs, fp32 on CPUs,
    where bf16 autocast measured slower for training).

Prints samples/s, peak RSS and the ratio b/a (goal >= 2); appends to bench/RESULTS.md.

The default is BLIP-base's architecture at 384 px, the model people fine-tune: there the text
decoder and its 30,524-token output layer over 512 padded positions cost more than the vision
encoder, which is what the original loop pays for. The small model (64 px, 128 positions) is a
quick smoke test, not a measure of the gain: its steps are so short that fixed per-step costs
dominate (it measured 1.25x here, BLIP-base 2.33x).

    python bench/training_speed.py                 # BLIP-base, 16 samples, batch 4 (~3 min on 2 cores)
    python bench/training_speed.py --full          # BLIP-base, 64 samples, batch 8
    python bench/training_speed.py --small         # small model, 480 samples, batch 8 (seconds)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import RESULTS, record


def make_data(folder: Path, n: int, image_size: int) -> Path:
    """n synthetic pictures paired with real ROCO captions, as a CSV manifest."""
    from PIL import Image

    from medblip_dicom.training.demo_model import roco_captions
    from medblip_dicom.training.synthetic import make_sample

    rng = random.Random(0)
    captions = roco_captions()
    manifest = folder / "pairs.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "caption"])
        for i in range(n):
            path = folder / f"img{i:05d}.jpg"
            make_sample(rng).image.resize((image_size, image_size), Image.Resampling.BILINEAR).save(path, quality=90)
            writer.writerow([i, path.name, captions[i % len(captions)]])
    return manifest


def run_original(manifest: Path, model_dir: Path, batch: int) -> dict:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from medblip_dicom.training.records import load_records

    torch.manual_seed(0)
    records = load_records(manifest)
    processor = BlipProcessor.from_pretrained(model_dir)
    model = BlipForConditionalGeneration.from_pretrained(model_dir)
    from PIL import Image

    max_length = model.config.text_config.max_position_embeddings  # 512 for BLIP-base

    class Original(torch.utils.data.Dataset):
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            enc = processor(images=Image.open(records[i].image).convert("RGB"), text=records[i].caption,
                            padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
            return {k: v.squeeze(0) for k, v in enc.items()}

    loader = torch.utils.data.DataLoader(Original(), batch_size=batch, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    started = time.perf_counter()
    for batch_items in loader:
        out = model(pixel_values=batch_items["pixel_values"], input_ids=batch_items["input_ids"],
                    attention_mask=batch_items["attention_mask"], labels=batch_items["input_ids"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {"samples_per_s": len(records) / (time.perf_counter() - started)}


def run_ours(manifest: Path, model_dir: Path, batch: int, out: Path) -> dict:
    from medblip_dicom.training.config import TrainConfig
    from medblip_dicom.training.trainer import _mixed_precision, train

    precision = "auto"  # what a user gets: bf16/fp16 on GPUs, fp32 on the CPU
    config = TrainConfig(data=str(manifest), base_model=str(model_dir), out=str(out), epochs=1, batch_size=batch,
                         lr=5e-5, seed=0, precision=precision, max_eval_samples=1, validate_files=False)
    # The manifest has no validation split: evaluate on the training manifest's first row.
    train(config, progress=False)
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    import torch

    return {"samples_per_s": line["train_samples_per_s"],
            "precision": _mixed_precision(config, not torch.cuda.is_available()).replace("no", "fp32")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="BLIP-base, 64 samples, batch 8")
    parser.add_argument("--small", action="store_true", help="the small model: a smoke test, not the measure")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--contender", choices=["original", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    size = "small" if args.small else "base"
    n = args.n or (480 if args.small else 64 if args.full else 16)
    args.batch_size = args.batch_size or (8 if args.small or args.full else 4)

    if args.contender:  # child process: run one contender, print JSON with its peak memory
        work = args.workdir
        if args.contender == "original":
            result = run_original(work / "pairs.csv", work / "model", args.batch_size)
        else:
            result = run_ours(work / "pairs.csv", work / "model", args.batch_size, work / "run")
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return 0

    from medblip_dicom.training.demo_model import build_blip_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_blip_model(work / "model", size=size)
        image_size = 384 if size == "base" else 64
        make_data(work, n, max(image_size, 256))
        results = {}
        for contender in ("original", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--contender", contender, "--workdir", str(work),
                                   "--batch-size", str(args.batch_size)] + (["--small"] if args.small else []),
                                  capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            results[contender] = json.loads(line[len("RESULT "):])
    a, b = results["original"], results["ours"]
    record("Training", f"{size} BLIP, {n} samples (synthetic pictures, real ROCO captions), batch "
           f"{args.batch_size}, one epoch.", [
               "| contender | samples/s | peak RSS (MB) | setting |", "|---|---|---|---|",
               f"| (a) original loop | {a['samples_per_s']:.2f} | {a['peak_rss_mb']:.0f} | padded to the model "
               "maximum, fp32, labels unmasked |",
               f"| (b) medblip trainer | {b['samples_per_s']:.2f} | {b['peak_rss_mb']:.0f} | longest-in-batch, "
               f"{b['precision']} |",
               f"| **b/a** (goal >= 2) | **{b['samples_per_s'] / a['samples_per_s']:.2f}** | | |"], argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
