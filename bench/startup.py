"""Start-up and short runs as a user sees them: whole processes, side by side, on BLIP-base.

Contenders, each a fresh process timed from spawn to exit, on the same files and model:

(bare)   a script that imports torch and transformers, loads the model and processor with
         ``from_pretrained``, reads each file with pydicom, scales it to 8 bits, runs the processor
         and ``generate`` (batch 8) and prints the captions: the least any tool must do;
(before) ``medblip caption FILES --model M --out DIR`` of an earlier commit (``--before REV``,
         default the commit before the digest cache), checked out into a temporary worktree;
(cold)   this checkout's ``medblip caption``, with an empty weights-digest cache (the first start
         after a model changed);
(warm)   the same with the cache filled (every later start).

Rounds alternate the contenders (the best round of each counts, which filters out bursts of
background load). Prints seconds and the ratios bare/contender (1.0 = as fast as the bare script),
and appends the run to bench/RESULTS.md. Never run as a test.

    python bench/startup.py                       # 1 and 16 files, 3 rounds (about 10 minutes on 2 cores)
    python bench/startup.py --files 1 16 64 --rounds 2
    python bench/startup.py --after HEAD          # (cold)/(warm) from the last commit: edit freely meanwhile
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import RESULTS, record

ROOT = Path(__file__).resolve().parent.parent
#: The commit before this benchmark's change (digest cache, light start path).
DEFAULT_BEFORE = "b208e03"

BARE = r'''
import sys
import numpy as np, pydicom, torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor
model_dir, files = sys.argv[1], sys.argv[2:]
processor = BlipProcessor.from_pretrained(model_dir)
model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
cpu_flags = open("/proc/cpuinfo").read()
if torch.cuda.is_available():
    model = model.to("cuda", torch.bfloat16)
elif "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags:  # what medblip's dtype "auto" picks
    model = model.to(torch.bfloat16)
def picture(path):
    arr = pydicom.dcmread(path).pixel_array
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] != 3):
        arr = arr[arr.shape[0] // 2]
    arr = arr.astype(np.float32)
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1.0) * 255
    return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
with torch.inference_mode():
    for i in range(0, len(files), 8):
        inputs = processor(images=[picture(f) for f in files[i:i + 8]], return_tensors="pt")
        out = model.generate(pixel_values=inputs["pixel_values"].to(model.device, model.dtype), num_beams=3,
                             max_new_tokens=20,
                             min_new_tokens=20, do_sample=False)
        print("\n".join(processor.batch_decode(out, skip_special_tokens=True)))
'''


def _has_per_series(env: dict[str, str], cwd: Path) -> bool:
    """Whether the (cold)/(warm) code's ``medblip caption`` has ``--per-series``."""
    proc = subprocess.run([sys.executable, "-m", "medblip_dicom", "caption", "--help"], capture_output=True, text=True,
                          env=env, cwd=cwd)
    return "--per-series" in proc.stdout


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def before_checkout(rev: str, folder: Path, env: dict[str, str], cwd: Path) -> Path:
    """An earlier commit as an importable tree (its training/ and integrations/ linked into the package).

    Every contender runs in `cwd`, a folder without a ``medblip_dicom`` of its own: run from a
    checkout, the working directory (first on sys.path) would shadow PYTHONPATH. Checked here.
    """
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True,
                   capture_output=True)
    for sub in ("training", "integrations"):
        os.symlink(folder / sub, folder / "medblip_dicom" / sub)
    where = subprocess.run([sys.executable, "-c", "import medblip_dicom.api as a; print(a.__file__)"], cwd=cwd,
                           env=dict(env, PYTHONPATH=str(folder)), capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(folder)):
        raise SystemExit(f"(before) would import {where}, not the checkout of {rev} in {folder}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[1, 16], help="file counts (default 1 16)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision of (before); '' to skip it")
    parser.add_argument("--after", default="", help="git revision of (cold) and (warm) (default: this checkout as "
                        "installed), so that a long run is not disturbed by edits")
    parser.add_argument("--model", type=Path, default=None, help="a base-size model dir (default: build one)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from caption_pipeline import make_inputs

    from medblip_dicom.training.demo_model import build_blip_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or build_blip_model(tmp / "blip-base", size="base")
        (tmp / "in").mkdir()
        files = [str(p) for p in make_inputs(tmp / "in", max(args.files))]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        warm_cache, old = tmp / "cache-warm", None
        work = tmp / "work"
        work.mkdir()
        if args.before:
            old = before_checkout(args.before, tmp / "before", env, work)
        new = before_checkout(args.after, tmp / "after", env, work) if args.after else None
        new_env = dict(env, PYTHONPATH=str(new)) if new is not None else env
        flags = ["--model", str(model), "--num-beams", "3", "--max-new-tokens", "20", "--min-new-tokens", "20",
                 "--no-repeat-ngram-size", "0", "-q"]
        # The re-issued copies share their template's series: caption every one, as the bare script
        # does (selection would caption one per series), where the code has the flag.
        each = ["--per-series", "each"] if _has_per_series(new_env, work) else []
        try:
            rows, times = [], {}
            for n in args.files:
                some = files[:n]
                contenders = {
                    "bare": ([sys.executable, "-c", BARE, str(model), *some], env),
                    "cold": ([sys.executable, "-m", "medblip_dicom", "caption", *some, *flags, *each, "--out",
                              str(tmp / "o")], None),
                    "warm": ([sys.executable, "-m", "medblip_dicom", "caption", *some, *flags, *each, "--out",
                              str(tmp / "o")],
                             dict(new_env, MEDBLIP_CACHE_DIR=str(warm_cache))),
                }
                if old is not None:
                    contenders["before"] = ([sys.executable, "-m", "medblip_dicom", "caption", *some, *flags, "--out",
                                             str(tmp / "o")], dict(env, PYTHONPATH=str(old)))
                timed(contenders["warm"][0], contenders["warm"][1], work)  # fills the warm cache, warms the page cache
                best: dict[str, float] = {}
                for r in range(args.rounds):
                    for name, (cmd, cenv) in contenders.items():
                        if name == "cold":
                            cenv = dict(new_env, MEDBLIP_CACHE_DIR=str(tmp / f"cache-cold-{n}-{r}"))
                        best[name] = min(best.get(name, float("inf")), timed(cmd, cenv, work))
                times[n] = best
                for name in ("bare", "before", "cold", "warm"):
                    if name in best:
                        rows.append(f"| {n} | {name} | {best[name]:.2f} | {best['bare'] / best[name]:.2f} |")
        finally:
            for tree in (old, new):
                if tree is not None:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                                   capture_output=True)
    table = ["| files | contender | seconds (best of rounds) | bare/contender |", "|---|---|---|---|", *rows]
    record("Start-up and short runs", f"BLIP-base architecture (random weights), {args.rounds} alternating rounds, "
           f"whole processes; (before) = `{args.before or '-'}`, (cold)/(warm) = `{args.after or 'this checkout'}`; "
           "beams 3, 20 new tokens, batch 8.", table, argv,
           args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
