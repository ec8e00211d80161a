"""``medblip batch`` (Ray Data) beside ``medblip caption`` (one process) on the same files and model.

Both contenders caption the same --n DICOM files (re-issued real test images, every one captioned:
``per_series = "each"``) with the same model and forced caption length, and write SRs to disk:

(caption) :func:`medblip_dicom.api.caption_dicoms`, what ``medblip caption`` runs: prepare threads,
          the model in the calling thread;
(batch)   :func:`medblip_dicom.integrations.batch.job.run_batch`, what ``medblip batch`` runs: a
          local Ray started here (all cores), prepare tasks, one caption actor, write tasks.

For each: images/s over the whole run (model loading included; for batch also the facts pass and
the actor start, not Ray's own start-up, which is timed apart) and at steady state (from the first
captioned result to the last). The ratio batch/caption at steady state is the goal (>= 0.8 on one
machine; --rounds alternates them and keeps the best of each). The model is BLIP-base's architecture with random weights (``build_blip_model``, as
bench/caption_pipeline.py), or --size small/tiny for a quick look. Appends the run to
bench/RESULTS.md. Never run as a test.

    python bench/batch_ray.py                 # 200 files, BLIP-base, 20 tokens (several minutes on 2 cores)
    python bench/batch_ray.py --size small    # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchlib import RESULTS, record
from caption_pipeline import make_inputs

from medblip_dicom.api import caption_dicoms
from medblip_dicom.captioner import Captioner
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.selection import SelectConfig
from medblip_dicom.training.demo_model import build_blip_model

EACH = SelectConfig(per_series="each")


def run_caption(model_dir: Path, files: list[Path], batch: int, settings: GenerationSettings,
                out: Path) -> tuple[float, float, int]:
    """(whole-run images/s incl. model load, steady-state images/s, captioned) of caption_dicoms."""
    started = time.perf_counter()
    captioner = Captioner.load(model_dir, device="auto", dtype="auto", settings=settings)
    stamps = []
    for outcome in caption_dicoms([str(f) for f in files], model=captioner, output_dir=out, batch_size=batch,
                                  select=EACH):
        if outcome.ok:
            stamps.append(time.perf_counter())
    whole = len(stamps) / (time.perf_counter() - started)
    # results come one by one, but a batch's finish together: steady state starts after the first batch
    first = stamps[min(batch, len(stamps)) - 1]
    steady = (len(stamps) - min(batch, len(stamps))) / (stamps[-1] - first) if stamps[-1] > first else 0.0
    return whole, steady, len(stamps)


def run_batch_job(model_dir: Path, files: list[Path], batch: int, settings: GenerationSettings,
                  out: Path) -> tuple[float, float, int, float, str]:
    """(whole-run images/s, steady images/s, captioned, Ray start-up s, the resources used) of run_batch."""
    import ray

    from medblip_dicom.integrations.batch.job import BatchConfig, _resources, connect, run_batch

    startup = connect(None)
    try:
        config = BatchConfig(model=str(model_dir), output_dir=out, batch_size=batch, select=EACH,
                             generation={"num_beams": settings.num_beams, "max_new_tokens": settings.max_new_tokens,
                                         "min_new_tokens": settings.min_new_tokens,
                                         "no_repeat_ngram_size": settings.no_repeat_ngram_size})
        used = _resources(config)
        run = run_batch([(str(f), False) for f in files], config)
    finally:
        ray.shutdown()
    captioned = int((run.table["status"] == "captioned").sum())
    setting = (f"1 actor x {used['actor_cpus']:g} CPUs ({used['threads']} threads), "
               f"{used['prepare_workers']} prepare tasks x {used['prepare_cpus']:g} CPU")
    return captioned / run.elapsed_s, run.steady_images_s, captioned, startup, setting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="files (default 200)")
    parser.add_argument("--batch-size", type=int, default=64 if torch.cuda.is_available() else 8)
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption (forced)")
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base"], help="model architecture")
    parser.add_argument("--model", type=Path, default=None, help="a model dir (default: build one of --size)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (caption, batch, ...); "
                        "the best round of each counts, which filters out bursts of background load")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = GenerationSettings(num_beams=1, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                  no_repeat_ngram_size=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model or build_blip_model(tmp / f"blip-{args.size}", size=args.size)
        (tmp / "in").mkdir()
        files = make_inputs(tmp / "in", args.n)
        load = os.getloadavg()[0]
        c_runs, b_runs = [], []
        for r in range(args.rounds):
            c_runs.append(run_caption(model_dir, files, args.batch_size, settings, tmp / f"out-caption-{r}"))
            b_runs.append(run_batch_job(model_dir, files, args.batch_size, settings, tmp / f"out-batch-{r}"))
            load = max(load, os.getloadavg()[0])
    assert all(run[2] == args.n for run in c_runs + b_runs), "not every file was captioned"
    c_whole, c_steady = max(r[0] for r in c_runs), max(r[1] for r in c_runs)
    b_whole, b_steady = max(r[0] for r in b_runs), max(r[1] for r in b_runs)
    startup, setting = min(r[3] for r in b_runs), b_runs[0][4]
    table = ["| contender | images/s, whole run | images/s, steady state | setting |", "|---|---|---|---|",
             f"| medblip caption (caption_dicoms) | {c_whole:.2f} | {c_steady:.2f} | batch {args.batch_size}, "
             "prepare threads |",
             f"| medblip batch (Ray Data, local) | {b_whole:.2f} | {b_steady:.2f} | batch {args.batch_size}, {setting} |",
             f"| Ray start-up (ray.init, local) | {startup:.1f} s | | not in either rate |",
             f"| **batch/caption, steady state** (goal >= 0.8) | | **{b_steady / c_steady:.2f}** | |",
             f"| batch/caption, whole run | {b_whole / c_whole:.2f} | | |"]
    record("Batch on Ray Data vs caption", f"{args.n} files, {args.tokens} new tokens each, {args.size} "
           f"architecture, random weights; best of {args.rounds} alternating round(s), caption first; load average up "
           f"to {load:.1f} "
           "(the machine is shared).", table, argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
