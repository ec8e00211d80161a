"""The GPU run: model-only throughput and latency, the pipeline with a CpuPool, and what lifts the model.

Run by ``bench/gpu_run.sh`` on a lent GPU (one device call, a time budget); ``--smoke`` runs every
step on a CPU with a tiny model and small batches, so the script is tested before a GPU is spent.
BLIP-base architecture with random weights (``build_blip_model(size="base")``), bf16 on CUDA, every
caption forced to exactly ``--tokens`` new tokens (greedy), so each contender does the same work.

Steps, each skipped with a reason when the budget is spent, each written to ``OUT/gpu.json`` as
soon as it is measured (a run killed at its limit still leaves what it measured):

1. model only: captions/s at each ``--batches`` size, and batch-1 latency (p50, mean);
2. the pipeline (DICOM files of a CR JPEG 2000 / CR / CT / MR / US mix -> SRs on disk) with a
   ``CpuPool`` of ``--processes`` processes at ``--pipeline-batch``: captions/s and the ratio to
   model-only at the same batch;
3. node ingest (``bench/node_ingest.py``): the service's node at ``[node] listeners`` = 1, 4, 8
   under 8 concurrent streams of ~38 KiB CT slices, against storescp --fork (dcmsend senders) or,
   where the machine has no dcmtk, the fair Python peer (pynetdicom senders): the listener design's
   scaling where there are cores;
4. lifts at ``--pipeline-batch`` and batch 1, each on top of the last one that helped: SDPA in the
   vision tower (captions compared with the eager ones), ``torch.compile`` of the vision tower
   (compile time measured), a static KV cache for the decoder where transformers' BLIP allows it;
5. the pipeline again with the lifts that helped.

    python bench/gpu_bench.py --out /tmp/gpu            # on a GPU
    python bench/gpu_bench.py --smoke --out /tmp/gpu    # every step on a CPU, in about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import torch
from pydicom.uid import generate_uid

from medblip_dicom import acceleration
from medblip_dicom.api import caption_dicoms
from medblip_dicom.captioner import Captioner
from medblip_dicom.cpupool import CpuPool
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.pixels import dataset_to_image
from medblip_dicom.training.demo_model import build_blip_model

#: The image mix: CR (uncompressed and JPEG 2000), CT, MR, US, MR RLE.
MIX = ("RG3_J2KR.dcm", "CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm", "CT_small.dcm", "MR_small.dcm",
       "US1_UNCR.dcm", "MR_small_RLE.dcm")


class Run:
    """The results so far, written to OUT/gpu.json after every step, and the time budget."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"steps": {}, "skipped": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        tmp = self.out / "gpu.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.out / "gpu.json")

    def step(self, name: str, needs_s: float, fn: Callable[[], Any]) -> Any:
        """Run one step if `needs_s` seconds are left; record its result, or why it did not run."""
        if self.left() < needs_s:
            self.data["skipped"][name] = f"budget: {self.left():.0f} s left, the step needs about {needs_s:.0f} s"
            self.save()
            return None
        began = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a failed step is a result, the run goes on
            self.data["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            self.save()
            return None
        self.data["steps"][name] = {"result": result, "seconds": round(time.monotonic() - began, 1)}
        print(f"[{self.data['elapsed_s'] if 'elapsed_s' in self.data else 0}] {name}: {result}", flush=True)
        self.save()
        return result


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def source_file(name: str, data: Path | None) -> str:
    if data is not None and (data / name).exists():
        return str(data / name)
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name}: not in {data} and not among pydicom's test files")
    return str(path)


def make_inputs(folder: Path, n: int, data: Path | None) -> list[Path]:
    """`n` files of the mix, re-issued with fresh UIDs (every SR is new)."""
    folder.mkdir(parents=True, exist_ok=True)
    templates = {name: pydicom.dcmread(source_file(name, data)) for name in set(MIX)}
    files = []
    for i in range(n):
        ds = templates[MIX[i % len(MIX)]]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"img{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def batch_tensor(captioner: Captioner, files: list[Path], batch: int) -> torch.Tensor:
    images = [dataset_to_image(pydicom.dcmread(f)) for f in files[: min(batch, len(files))]]
    images = (images * (batch // len(images) + 1))[:batch]
    return captioner.preprocess(images)


def time_generate(captioner: Captioner, pixels: torch.Tensor, settings: GenerationSettings, *,
                  min_s: float, min_calls: int, warmup: int = 2, **extra: Any) -> dict[str, Any]:
    """Captions/s and per-call latency of `generate` on one fixed batch (after warm-up calls)."""
    generate = _generator(captioner, settings, extra)
    for _ in range(warmup):
        generate(pixels)
    sync()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - began < min_s:
        t0 = time.perf_counter()
        generate(pixels)
        sync()
        times.append(time.perf_counter() - t0)
    batch = int(pixels.shape[0])
    return {"batch": batch, "calls": len(times), "captions_per_s": round(batch * len(times) / sum(times), 2),
            "latency_ms_p50": round(1000 * statistics.median(times), 2),
            "latency_ms_mean": round(1000 * statistics.fmean(times), 2)}


def _generator(captioner: Captioner, settings: GenerationSettings, extra: dict[str, Any]) -> Callable[[torch.Tensor], list[str]]:
    if not extra:
        return lambda pixels: captioner.generate(pixels, settings)

    @torch.inference_mode()
    def generate(pixels: torch.Tensor) -> list[str]:
        kwargs = settings.generate_kwargs() | extra
        out = captioner.model.generate(pixel_values=pixels.to(captioner.device, captioner.dtype), **kwargs)
        return [" ".join(t.split()) for t in captioner.processor.batch_decode(out, skip_special_tokens=True)]

    return generate


def run_pipeline(captioner: Captioner, files: list[Path], batch: int, out: Path, pool: CpuPool | None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    outcomes = list(caption_dicoms([str(f) for f in files], model=captioner, output_dir=out, batch_size=batch,
                                   pool=pool))
    seconds = time.perf_counter() - began
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"pipeline failed on {len(failed)} files: {failed[0].error}")
    return {"files": len(files), "batch": batch, "captions_per_s": round(len(files) / seconds, 2),
            "seconds": round(seconds, 2), "processes": pool.processes if pool else 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="folder holding the mix's source files")
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny model, small batches, short runs")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--pipeline-batch", type=int, default=None)
    parser.add_argument("--files", type=int, default=None, help="pipeline files (default 2048; smoke 16)")
    parser.add_argument("--processes", type=int, default=None, help="CpuPool size (default cores - 1)")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--ingest-listeners", type=int, nargs="*", default=None,
                        help="node ingest at these [node] listeners (default 1 4 8; smoke 1 2; none: skip)")
    parser.add_argument("--ingest-senders", choices=("dcmsend", "pynetdicom"), default=None,
                        help="default: dcmsend where dcmtk is installed (pynetdicom in smoke mode)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    batches = args.batches or ([1, 4] if smoke else [1, 16, 64, 128])
    pbatch = args.pipeline_batch or (4 if smoke else 64)
    nfiles = args.files or (16 if smoke else 2048)
    processes = args.processes or max(1, (os.cpu_count() or 2) - 1)
    min_s, min_calls = (0.5, 2) if smoke else (3.0, 5)
    run = Run(args.out, args.budget_s)
    cuda = torch.cuda.is_available()
    run.data["env"] = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
                       "cuda": torch.version.cuda, "python": platform.python_version(),
                       "transformers": __import__("transformers").__version__, "cpus": os.cpu_count(),
                       "smoke": smoke, "tokens": args.tokens, "processes": processes}
    run.save()
    settings = GenerationSettings(num_beams=1, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                  no_repeat_ngram_size=0)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        model_dir = build_blip_model(work / "model", size="tiny" if smoke else "base")
        captioner = Captioner.load(model_dir, device="cuda" if cuda else "cpu", dtype="bfloat16" if cuda else "float32",
                                   settings=settings)
        run.data["env"]["dtype"] = str(captioner.dtype).split(".")[-1]
        files = run.step("inputs", 30, lambda: [str(p) for p in make_inputs(work / "in", nfiles, args.data)])
        files = [Path(f) for f in files or []]
        if not files:
            return 1
        tensors = {b: batch_tensor(captioner, files, b) for b in sorted(set(batches) | {pbatch, 1})}
        run.data["steps"].pop("inputs", None)
        run.data["inputs"] = {"files": len(files), "mix": list(MIX)}
        for b in batches:
            run.step(f"model_only_b{b}", 20, lambda b=b: time_generate(captioner, tensors[b], settings,
                                                                          min_s=min_s, min_calls=min_calls))
        model_only = (run.data["steps"].get(f"model_only_b{pbatch}") or {}).get("result") or {}
        pool = CpuPool(captioner, processes)
        try:
            pool.warm_up()
            run_pipeline(captioner, files[: max(pbatch * 2, 8)], pbatch, work / "warm", pool)  # warm-up
            pipe = run.step("pipeline", 90, lambda: run_pipeline(captioner, files, pbatch, work / "out", pool))
            if pipe and model_only:
                pipe["ratio_to_model_only"] = round(pipe["captions_per_s"] / model_only["captions_per_s"], 3)
                run.save()
            measure_ingest(run, work / "ingest", args, smoke)
            lifts = measure_lifts(run, captioner, tensors, settings, pbatch, min_s, min_calls)
            if lifts:
                again = run.step("pipeline_with_lifts", 90,
                                 lambda: run_pipeline(captioner, files, pbatch, work / "out2", pool))
                best = (run.data["steps"].get("lift_best") or {}).get("result") or {}
                if again and best.get("captions_per_s"):
                    again["ratio_to_model_only"] = round(again["captions_per_s"] / best["captions_per_s"], 3)
                    again["lifts"] = lifts
                    run.save()
        finally:
            pool.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.out / "gpu.md").write_text(table(run.data))
    print(table(run.data))
    return 0


def measure_ingest(run: Run, work: Path, args: argparse.Namespace, smoke: bool) -> None:
    """Node ingest at each ``--ingest-listeners`` count (each figure saved as it comes), after its reference."""
    import node_ingest  # bench/, the folder of this script

    listeners = tuple(args.ingest_listeners) if args.ingest_listeners is not None else (1, 2) if smoke else (1, 4, 8)
    if not listeners:
        return
    senders = args.ingest_senders or ("pynetdicom" if smoke else node_ingest.scaling_senders())
    n, streams = (40, 2) if smoke else (800, 8)
    reference = run.step("ingest_reference", 30, lambda: node_ingest.scaling_reference(
        work, n=n, streams=streams, senders=senders))
    for count in listeners:
        run.step(f"ingest_listeners_{count}", 40, lambda count=count: node_ingest.scaling_node(
            work, n=n, streams=streams, listeners=count, senders=senders,
            reference_per_s=(reference or {}).get("per_s")))


def measure_lifts(run: Run, captioner: Captioner, tensors: dict[int, torch.Tensor], settings: GenerationSettings,
                  pbatch: int, min_s: float, min_calls: int) -> list[str]:
    """SDPA, then torch.compile, then a static cache; keep each that helped. Returns those kept."""
    base = (run.data["steps"].get(f"model_only_b{pbatch}") or {}).get("result")
    if not base:
        return []
    reference = captioner.generate(tensors[pbatch], settings)
    kept: list[str] = []
    best = dict(base)

    def measure(name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        result = time_generate(captioner, tensors[pbatch], settings, min_s=min_s, min_calls=min_calls, **(extra or {}))
        one = time_generate(captioner, tensors[1], settings, min_s=min_s, min_calls=min_calls, **(extra or {}))
        captions = _generator(captioner, settings, extra or {})(tensors[pbatch])
        result["latency_b1_ms_p50"] = one["latency_ms_p50"]
        result["captions_differing"] = sum(a != b for a, b in zip(reference, captions))
        result["speedup"] = round(result["captions_per_s"] / best["captions_per_s"], 3)
        return result

    sdpa = run.step("lift_sdpa_vision", 40, lambda: (acceleration.use_sdpa_vision_attention(captioner.model),
                                                     measure("sdpa"))[1])
    if sdpa and sdpa["speedup"] > 1.0:
        kept.append("sdpa_vision")
        best = sdpa
    elif sdpa:  # it did not help: put the eager attention back by reloading the blocks' forward
        for module in captioner.model.vision_model.modules():
            module.__dict__.pop("forward", None)

    def compiled() -> dict[str, Any]:
        began = time.perf_counter()
        acceleration.compile_vision(captioner.model)
        for b in (pbatch, 1):  # compile both shapes before timing
            captioner.generate(tensors[b], settings)
        sync()
        result = measure("compile")
        result["compile_s"] = round(time.perf_counter() - began, 1)
        return result

    comp = run.step("lift_compile_vision", 150, compiled)
    if comp and comp["speedup"] > 1.0:
        kept.append("compile_vision")
        best = comp
    elif comp:
        captioner.model.vision_model.__dict__.pop("forward", None)

    run.data["static_cache_supported"] = acceleration.static_cache_supported(captioner.model)
    static = run.step("lift_static_cache", 60, lambda: measure("static", {"cache_implementation": "static"}))
    if static and static["speedup"] > 1.0:
        kept.append("static_cache (bench only)")
        best = static
    run.data["steps"]["lift_best"] = {"result": {**best, "kept": kept}}
    big = max(tensors) * 2
    run.step(f"model_only_b{big}_with_lifts", 40, lambda: time_generate(
        captioner, torch.cat([tensors[max(tensors)]] * 2), settings, min_s=min_s, min_calls=min_calls))
    run.save()
    return kept


def table(data: dict[str, Any]) -> str:
    """The run as a markdown table for bench/RESULTS.md."""
    env = data.get("env", {})
    lines = [f"GPU: {env.get('gpu')}; torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers "
             f"{env.get('transformers')}, Python {env.get('python')}, {env.get('cpus')} CPUs, {env.get('dtype')}, "
             f"{env.get('tokens')} new tokens per caption (forced, greedy).", "",
             "| step | captions/s | batch | latency p50 ms | note |", "|---|---|---|---|---|"]
    for name, step in data.get("steps", {}).items():
        r = step.get("result") or {}
        if not isinstance(r, dict):
            continue
        note = ", ".join(f"{k} {v}" for k, v in r.items()
                         if k in ("ratio_to_model_only", "speedup", "captions_differing", "compile_s", "processes",
                                  "latency_b1_ms_p50", "kept", "lifts", "reference", "per_s", "ratio_to_reference",
                                  "streams", "senders"))  # node ingest: instances/s in the note
        lines.append(f"| {name} | {r.get('captions_per_s', '')} | {r.get('batch', '')} | {r.get('latency_ms_p50', '')} "
                     f"| {note} |")
    for name, why in {**data.get("skipped", {}), **data.get("errors", {})}.items():
        lines.append(f"| {name} | - | | | {why[:200]} |")
    lines.append(f"\nstatic cache supported by this transformers' BLIP: {data.get('static_cache_supported')}; "
                 f"elapsed {data.get('elapsed_s')} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
