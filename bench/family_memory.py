"""Memory per model family on the CPU: parameters, weight bytes and the peak RSS of loading and captioning.

Contenders, side by side in one run, each in a process of its own (so one's peak is not another's):
BLIP-base (the default), SmolVLM-256M's shapes (Idefics3 layout) and Gemma 3 4B's shapes
(MedGemma 4B's architecture), all with random weights and locally built vocabularies of the real
widths (:mod:`medblip_dicom.training.demo_families`). For each: parameters (counted on the meta
device, nothing allocated), weight bytes at the dtype the CPU uses, and, for the models that fit
this machine (``--max-params``), the peak resident memory of a process that loads the model with
:meth:`~medblip_dicom.captioner.Captioner.load` and captions ``--batch`` pictures of 512 x 512 with
``--tokens`` new tokens, plus that process's resident memory before the model (Python, torch and
transformers). Ratios are to BLIP-base. Larger models are listed with their weight bytes only.

    python bench/family_memory.py                 # appends its table to bench/RESULTS.md
    python bench/family_memory.py --max-params 0  # counts only, in seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONTENDERS = (("BLIP-base", "blip", "base"), ("SmolVLM-256M shapes", "idefics3", "smolvlm-256m"),
              ("Gemma 3 4B shapes", "gemma3", "gemma3-4b"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count(family: str, size: str) -> int:
    """Parameters of the contender, built on the meta device (no memory, no weights)."""
    import torch

    if family == "blip":
        from transformers import BlipConfig, BlipForConditionalGeneration

        from medblip_dicom.training.demo_model import SIZES

        dims = SIZES[size]
        config = BlipConfig(text_config=dict(dims["text"], vocab_size=30524), vision_config=dims["vision"])
        with torch.device("meta"):
            return sum(p.numel() for p in BlipForConditionalGeneration(config).parameters())
    from medblip_dicom.training import demo_families

    with torch.device("meta"):  # the vocabularies are padded to the real widths: real embeddings
        model, _ = demo_families._BUILDERS[family](demo_families.SIZES[size], ["a b"])
        return sum(p.numel() for p in model.parameters())


def build(family: str, size: str, folder: Path) -> None:
    """Build the contender into `folder` (in a process of its own: its peak is not measured)."""
    if family == "blip":
        from medblip_dicom.training.demo_model import build_blip_model

        build_blip_model(folder, size=size)
    else:
        from medblip_dicom.training.demo_families import build_family_model

        build_family_model(folder, family, size=size)


def measure(folder: Path, batch: int, tokens: int) -> dict[str, Any]:
    """In this process: load `folder` with Captioner.load, caption `batch` pictures; the peak RSS."""
    import numpy as np
    from PIL import Image

    from medblip_dicom.captioner import Captioner
    from medblip_dicom.generation import GenerationSettings

    before = _rss_mb()
    settings = GenerationSettings(num_beams=1, max_new_tokens=tokens, min_new_tokens=tokens, no_repeat_ngram_size=0)
    captioner = Captioner.load(folder, device="cpu", dtype="auto", settings=settings)
    loaded = _rss_mb()
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(batch)]
    began = time.perf_counter()
    captioner.caption(pictures)
    seconds = time.perf_counter() - began
    return {"rss_before_mb": round(before), "peak_rss_load_mb": round(loaded), "peak_rss_mb": round(_rss_mb()),
            "dtype": str(captioner.dtype).split(".")[-1], "caption_s": round(seconds, 1)}


def _child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": " ".join(proc.stderr.strip().splitlines()[-1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--max-params", type=float, default=1e9, help="measure RSS only below this many parameters")
    parser.add_argument("--build", nargs=3, metavar=("FAMILY", "SIZE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--one", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build(args.build[0], args.build[1], Path(args.build[2]))
        print("{}")
        return 0
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.tokens)))
        return 0
    import torch

    from medblip_dicom.captioner import resolve_dtype

    width = torch.finfo(resolve_dtype("auto", torch.device("cpu"))).bits // 8
    rows = []
    for label, family, size in CONTENDERS:
        params = count(family, size)
        row: dict[str, Any] = {"model": label, "params_m": round(params / 1e6, 1),
                               "weights_mb": round(params * width / 2**20)}
        if params < args.max_params:
            with tempfile.TemporaryDirectory() as tmp:
                built = _child("--build", family, size, tmp)
                row.update(built if "error" in built else
                           _child("--one", tmp, "--batch", str(args.batch), "--tokens", str(args.tokens)))
        rows.append(row)
    from benchlib import record

    base = rows[0]
    table = ["| model | parameters | weights | peak RSS after load | peak RSS load + caption | RSS before the model "
             "| caption s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = f" ({row['weights_mb'] / base['weights_mb']:.1f}x)"
        peak = (f"{row['peak_rss_mb']} MB ({row['peak_rss_mb'] / base['peak_rss_mb']:.1f}x)"
                if "peak_rss_mb" in row and "peak_rss_mb" in base else row.get("error", "not run here"))
        mb = {k: f"{row[k]} MB" if k in row else "" for k in ("peak_rss_load_mb", "rss_before_mb")}
        table.append(f"| {row['model']} | {row['params_m']} M | {row['weights_mb']} MB{ratio} | "
                     f"{mb['peak_rss_load_mb']} | {peak} | {mb['rss_before_mb']} | {row.get('caption_s', '')} |")
    dtype = next((row["dtype"] for row in rows if "dtype" in row), "")
    record("Memory per model family", f"Random weights, real shapes and vocabulary widths, dtype auto ({dtype}); "
           f"one process per model: load with Captioner.load, caption {args.batch} pictures of 512 x 512 with "
           f"{args.tokens} new tokens; ratios to {base['model']}. Models of {args.max_params:.0e} parameters or "
           "more are counted, not run.", table, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
