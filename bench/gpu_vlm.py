"""The GPU run for vision-language models: BLIP-base, a SmolVLM-size and a ~4B-size model side by side.

Run by ``GPU_SUITE=vlm bash bench/gpu_run.sh`` on a lent GPU (one device call, a time budget);
``--smoke`` runs every step on a CPU with tiny models, so the script is tested before a GPU is spent.
Contenders, each with random weights and the real shapes (:mod:`medblip_dicom.training.demo_families`):

- ``blip-base``: BLIP-base (the default; no prompt), the reference the others are compared to;
- ``smolvlm-256m``: SmolVLM-256M's towers in the Idefics3 layout, its chat template, 64 image tokens
  per picture (image splitting off: one 512 px tile);
- ``gemma3-4b``: Gemma 3 4B's towers (MedGemma 4B's architecture), its chat template, 256 image
  tokens per picture at 896 px, a 262,208-token output layer.

For each, in bf16 on CUDA: model-only captions/s at each ``--batches`` size and batch-1 latency
(every caption forced to ``--tokens`` new tokens, greedy), the peak GPU memory of the largest batch,
then the pipeline (DICOM files of the mix -> SRs on disk, a ``CpuPool``) at ``--pipeline-batch``
with its ratio to model-only at that batch. Ratios to BLIP-base close the table. Each step is
written to ``OUT/gpu_vlm.json`` as soon as it is measured; a step the budget cannot hold is skipped
with the reason. The models are built in memory on the GPU (a 4B model is not written to disk and
read back); their identity is named by their configuration and seed.

    python bench/gpu_vlm.py --out /tmp/gpu            # on a GPU
    python bench/gpu_vlm.py --smoke --out /tmp/gpu    # every step on a CPU, in a few minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import Run, make_inputs, run_pipeline, sync  # noqa: E402 - the GPU run's shared parts

from medblip_dicom.captioner import Captioner  # noqa: E402
from medblip_dicom.cpupool import CpuPool  # noqa: E402
from medblip_dicom.families import resolve_prompt  # noqa: E402
from medblip_dicom.generation import GenerationSettings  # noqa: E402
from medblip_dicom.identity import ModelIdentity  # noqa: E402
from medblip_dicom.pixels import dataset_to_image  # noqa: E402

class VlmRun(Run):
    """:class:`gpu_bench.Run` writing ``OUT/gpu_vlm.json`` (``gpu.json`` is the BLIP run's)."""

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        tmp = self.out / "gpu_vlm.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.out / "gpu_vlm.json")


#: name -> (family, size on a GPU, size in a smoke run, model-only batches on a GPU, pipeline batch)
CONTENDERS = {
    "blip-base": ("blip", "base", "tiny", (1, 16, 64), 64),
    "smolvlm-256m": ("idefics3", "smolvlm-256m", "tiny", (1, 16, 64), 32),
    "gemma3-4b": ("gemma3", "gemma3-4b", "tiny", (1, 8, 32), 16),
}


def build(name: str, smoke: bool, device: str, dtype: torch.dtype, settings: GenerationSettings) -> Captioner:
    """The contender as a Captioner, built in memory where it runs."""
    family, size, tiny = CONTENDERS[name][:3]
    size = tiny if smoke else size
    if family == "blip":
        from medblip_dicom.training.demo_model import build_blip_model

        folder = build_blip_model(Path(tempfile.mkdtemp(prefix="gpu-vlm-blip-")), size=size)
        try:
            return Captioner.load(folder, device=device, dtype=dtype, settings=settings)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    from medblip_dicom.training.demo_families import make_family_model

    model, processor = make_family_model(family, size=size, device=device, dtype=dtype)
    model.eval()
    model_type = str(model.config.model_type)
    architecture = type(model).__name__
    prompt = resolve_prompt(model_type, architecture, name)
    key = hashlib.sha256(json.dumps({"config": model.config.to_dict(), "seed": 0}, sort_keys=True, default=str)
                         .encode()).hexdigest()
    identity = ModelIdentity(name, f"random-{size}", key, name, architecture=architecture, prompt=prompt)
    return Captioner(model, processor, torch.device(device), dtype, settings, prompt=prompt, identity=identity)


def batch_of(captioner: Captioner, files: list[Path], batch: int) -> Any:
    import pydicom

    images = [dataset_to_image(pydicom.dcmread(f)) for f in files[: min(batch, len(files))]]
    return captioner.preprocess((images * (batch // len(images) + 1))[:batch])


def time_generate(captioner: Captioner, inputs: Any, batch: int, settings: GenerationSettings, *, min_s: float,
                  min_calls: int) -> dict[str, Any]:
    """Captions/s and per-call latency of ``generate`` on one fixed batch (after two warm-up calls)."""
    for _ in range(2):
        captioner.generate(inputs, settings)
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - began < min_s:
        t0 = time.perf_counter()
        captioner.generate(inputs, settings)
        sync()
        times.append(time.perf_counter() - t0)
    out = {"batch": batch, "calls": len(times), "captions_per_s": round(batch * len(times) / sum(times), 2),
           "latency_ms_p50": round(1000 * statistics.median(times), 2)}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def contender(run: Run, name: str, args: argparse.Namespace, files: list[Path], work: Path) -> None:
    """Every step of one contender; its model is freed at the end."""
    cuda = torch.cuda.is_available()
    settings = GenerationSettings(num_beams=1, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                  no_repeat_ngram_size=0)
    batches, pbatch = CONTENDERS[name][3], CONTENDERS[name][4]
    if args.smoke:
        batches, pbatch = (1, 4), 4
    held: list[Captioner] = []

    def built() -> dict[str, Any]:
        held.append(build(name, args.smoke, "cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32,
                          settings))
        return {"architecture": held[0].identity.architecture, "prompt": held[0].prompt,
                "params_m": round(sum(p.numel() for p in held[0].model.parameters()) / 1e6, 1)}

    if run.step(f"{name}_build", 60 if not cuda else 150, built) is None:
        return
    captioner = held.pop()
    try:
        for b in batches:
            inputs = batch_of(captioner, files, b)
            run.step(f"{name}_model_only_b{b}", 30, lambda b=b, inputs=inputs: time_generate(
                captioner, inputs, b, settings, min_s=args.min_s, min_calls=args.min_calls))
        model_only = (run.data["steps"].get(f"{name}_model_only_b{pbatch}") or {}).get("result") or {}
        if not model_only:
            inputs = batch_of(captioner, files, pbatch)
            model_only = run.step(f"{name}_model_only_b{pbatch}", 30, lambda: time_generate(
                captioner, inputs, pbatch, settings, min_s=args.min_s, min_calls=args.min_calls)) or {}
        with CpuPool(captioner, args.processes) as pool:
            pool.warm_up()
            run_pipeline(captioner, files[: max(2 * pbatch, 8)], pbatch, work / f"{name}-warm", pool)
            pipe = run.step(f"{name}_pipeline", 90, lambda: run_pipeline(captioner, files, pbatch,
                                                                         work / f"{name}-out", pool))
        if pipe and model_only.get("captions_per_s"):
            pipe["ratio_to_model_only"] = round(pipe["captions_per_s"] / model_only["captions_per_s"], 3)
            run.save()
    finally:
        del captioner
        if cuda:
            torch.cuda.empty_cache()


def ratios(data: dict[str, Any]) -> dict[str, Any]:
    """Each contender's model-only captions/s over BLIP-base's, at every batch size both measured."""
    rates = {name: (step.get("result") or {}).get("captions_per_s") for name, step in data.get("steps", {}).items()
             if "_model_only_b" in name}
    out: dict[str, Any] = {}
    for key, mine in sorted(rates.items()):
        name, b = key.split("_model_only_b")
        blip = rates.get(f"blip-base_model_only_b{b}")
        if name != "blip-base" and mine and blip:
            out[f"{name}_vs_blip_b{b}"] = round(mine / blip, 3)
    return out


def table(data: dict[str, Any]) -> str:
    env = data.get("env", {})
    lines = [f"GPU: {env.get('gpu')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"{env.get('cpus')} CPUs, {env.get('dtype')}, {env.get('tokens')} new tokens per caption (forced, greedy).",
             "", "| step | captions/s | batch | latency p50 ms | peak GPU MiB | note |", "|---|---|---|---|---|---|"]
    for name, step in data.get("steps", {}).items():
        r = step.get("result") or {}
        if not isinstance(r, dict) or "captions_per_s" not in r:
            continue
        note = ", ".join(f"{k} {v}" for k, v in r.items() if k in ("ratio_to_model_only", "processes", "files"))
        lines.append(f"| {name} | {r['captions_per_s']} | {r.get('batch', '')} | {r.get('latency_ms_p50', '')} | "
                     f"{r.get('peak_gpu_mib', '')} | {note} |")
    for name, why in {**data.get("skipped", {}), **data.get("errors", {})}.items():
        lines.append(f"| {name} | - | | | | {why[:200]} |")
    models = {k[: -len("_build")]: v["result"] for k, v in data.get("steps", {}).items() if k.endswith("_build")}
    lines.append("\nmodels: " + json.dumps(models))
    lines.append("ratios to BLIP-base (model only): " + json.dumps(data.get("ratios", {})))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="folder holding the mix's source files")
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny models, small batches, short runs")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), default=None)
    parser.add_argument("--files", type=int, default=None, help="pipeline files (default 512; smoke 12)")
    parser.add_argument("--processes", type=int, default=None, help="CpuPool size (default cores - 1)")
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args(argv)
    args.processes = args.processes or max(1, (os.cpu_count() or 2) - 1)
    args.min_s, args.min_calls = (0.3, 2) if args.smoke else (3.0, 5)
    cuda = torch.cuda.is_available()
    run = VlmRun(args.out, args.budget_s)
    run.data["env"] = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
                       "cuda": torch.version.cuda, "python": platform.python_version(),
                       "transformers": __import__("transformers").__version__, "cpus": os.cpu_count(),
                       "smoke": args.smoke, "tokens": args.tokens, "processes": args.processes,
                       "dtype": "bfloat16" if cuda else "float32"}
    work = Path(tempfile.mkdtemp(prefix="gpu-vlm-"))
    try:
        files = [Path(f) for f in run.step("inputs", 30, lambda: [
            str(p) for p in make_inputs(work / "in", args.files or (12 if args.smoke else 512), args.data)]) or []]
        if not files:
            return 1
        run.data["steps"].pop("inputs", None)
        for name in args.only or CONTENDERS:
            contender(run, name, args, files, work)
        run.data["ratios"] = ratios(run.data)
        run.save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.out / "gpu_vlm.md").write_text(table(run.data))
    print(table(run.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
