"""One batch job on Ray Data: start or join Ray, plan the selection, stream prepare -> caption -> write.

:func:`connect` starts a local Ray in this process (all cores, no dashboard, usage stats off, an
object store sized to the machine) or joins a cluster (``auto`` or a head's address).
:func:`run_batch` then makes two passes over the inputs:

1. **Facts** (Ray tasks): each file's header only, the facts :func:`medblip_dicom.selection.plan`
   decides on. The plan is made in the driver over the complete set (the representative of a series
   depends on all its instances), exactly as ``medblip caption`` does. Before it, the driver keeps
   one input per SOPInstanceUID (the first; :mod:`medblip_dicom.duplicates`): a later one is a
   ``Duplicate`` row naming the first, so the rule holds across all workers.
2. **Caption** (one streaming Ray Data pipeline over the chosen files): prepare tasks (CPU) ->
   an actor pool of :class:`~medblip_dicom.integrations.batch.stages.CaptionActor` (the model loaded
   once per actor; ``num_gpus`` each on GPU machines; Ray restarts a dead actor and retries its
   batch) -> write tasks (the SR at its deterministic path, never rewritten).

The result is the table of :mod:`~medblip_dicom.integrations.batch.results`: one row per input, in
input order, with the rows of a ``--resume`` table carried over for the inputs it already holds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medblip_dicom.duplicates import DUPLICATE, SeenInstances
from medblip_dicom.integrations.batch import results as res
from medblip_dicom.integrations.batch import stages
from medblip_dicom.integrations.batch.manifest import done_paths
from medblip_dicom.selection import InstanceFacts, SelectConfig, plan, series_note

logger = logging.getLogger(__name__)

#: How often a caption actor may be restarted after its process died, and its batch retried.
MAX_RESTARTS = 3


@dataclass(frozen=True)
class BatchConfig:
    """What a batch job needs besides its inputs (the flags of ``medblip batch``)."""

    model: str
    output_dir: Path
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    frame: int | None = None
    generation: dict[str, Any] | None = None
    select: SelectConfig = field(default_factory=SelectConfig)
    num_gpus_per_worker: float = 0.0
    caption_workers: int | None = None  # default: one per GPU share, or one on CPU
    cpus_per_worker: float | None = None  # default: 1 with a GPU, else half the CPUs
    prepare_workers: int | None = None  # default: as many as the CPUs left allow
    resume: Path | None = None
    crash_once: str | None = None  # test hook, see CaptionActor
    prompt: str | None = None  # a model given an instruction: --prompt (default: its provenance's)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_gpus_per_worker < 0:
            raise ValueError(f"--num-gpus-per-worker must be >= 0, got {self.num_gpus_per_worker}")
        for name in ("caption_workers", "prepare_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def object_store_bytes() -> int:
    """The local object store's cap: a fifth of the machine's memory, between 256 MiB and 16 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(max(total // 5, 256 << 20), 16 << 30))


def token_auth_env(address: str | None) -> None:
    """Before Ray is imported: a driver joining `address` sends the token it holds.

    Ray 2.60 clusters require a token by default, but a driver sends the one it holds
    (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) only when ``RAY_AUTH_MODE=token`` is set when Ray
    loads its configuration; an explicit ``RAY_AUTH_MODE`` is left as it is.
    """
    token = Path.home() / ".ray" / "auth_token"
    if address and "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str | None) -> float:
    """Join Ray at `address` (``auto`` or ``host:port``), or start a local one; returns the seconds it took.

    An already initialised Ray (a test session, a notebook) is used as it is. Call
    :func:`token_auth_env` before the first ``import ray`` of the process.
    """
    import ray

    started = time.perf_counter()
    if ray.is_initialized():
        return 0.0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local": a new Ray of our own, even where RAY_ADDRESS or a cluster started earlier on this
        # machine would make a bare ray.init() join that one
        ray.init(address="local", include_dashboard=False, object_store_memory=object_store_bytes(),
                 log_to_driver=True)
    return time.perf_counter() - started


@dataclass
class BatchRun:
    """What a job produced: the table, its wall-clock seconds and its steady-state rate."""

    table: pd.DataFrame
    elapsed_s: float
    #: images/s written after the first batch was (actor start and model load excluded)
    steady_images_s: float = 0.0


def _blocks(frame: pd.DataFrame, cpus: float, batch_size: int) -> list[pd.DataFrame]:
    """`frame` in blocks small enough that every CPU gets several (Ray Data parallelises by block)."""
    size = max(batch_size, min(1024, math.ceil(len(frame) / max(1.0, 4 * cpus))))
    return [frame.iloc[i:i + size].reset_index(drop=True) for i in range(0, len(frame), size)]


def _resources(config: BatchConfig) -> dict[str, Any]:
    """Caption actors and their CPUs, and the prepare tasks' CPUs and count, for this cluster.

    With GPUs: one actor per `num_gpus_per_worker` GPUs with one CPU each; every other CPU prepares.
    On CPUs only the model is the bottleneck: one actor takes all CPUs but a share for preparing
    (an eighth, at least half a CPU), and its torch threads are its CPUs rounded up.
    """
    import ray

    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 1)), float(total.get("GPU", 0))
    gpu_each = config.num_gpus_per_worker
    if gpu_each > 0:
        actors = config.caption_workers or max(1, int(gpus // gpu_each))
        actor_cpus = config.cpus_per_worker or 1.0
    else:
        actors = config.caption_workers or 1
        actor_cpus = config.cpus_per_worker or max(1.0, (cpus - max(0.5, cpus / 8)) / actors)
    left = max(0.5, cpus - actors * actor_cpus)
    prepare_cpus = 0.25 if left < 1 else 0.5 if left < 2 else 1.0
    workers = config.prepare_workers or max(1, int(left // prepare_cpus))
    return {"cpus": cpus, "actors": actors, "actor_cpus": actor_cpus, "threads": max(1, math.ceil(actor_cpus)),
            "gpu_each": gpu_each, "prepare_cpus": prepare_cpus, "prepare_workers": workers}


def run_batch(inputs: Sequence[tuple[str, bool]], config: BatchConfig, *,
              on_rows: Callable[[pd.DataFrame], None] | None = None) -> BatchRun:
    """Caption `inputs` (``(path, named)``: named = given on the command line) on the connected Ray.

    `on_rows` is called with each finished chunk of result rows (progress). Returns the complete
    table: exactly one row per input, in input order.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("connect() to Ray first")
    started = time.perf_counter()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller shows one bar for the whole job
    ctx.print_on_execution_start = False
    plan_cfg = _resources(config)
    frame = pd.DataFrame({"index": range(len(inputs)), "path": [p for p, _ in inputs]})
    named = [n for _, n in inputs]
    rows: dict[int, dict[str, Any]] = {}

    carried = done_paths(config.resume) if config.resume is not None else None
    if carried is not None:
        by_path = {r["path"]: r for r in carried.to_dict("records")}
        for i, path in enumerate(frame["path"]):
            if path in by_path:
                rows[i] = dict(res.empty_row(path), **{k: v for k, v in by_path[path].items() if k in res.COLUMNS})

    facts_ds = ray.data.from_pandas(_blocks(frame, plan_cfg["cpus"], config.batch_size)).map_batches(
        stages.read_facts, batch_format="pandas", batch_size=max(config.batch_size, 32),
        num_cpus=plan_cfg["prepare_cpus"])
    facts: list[InstanceFacts | None] = [None] * len(frame)
    found = facts_ds.to_pandas()
    for index, text in zip(found["index"].tolist(), found["facts"].tolist()):
        if text:
            facts[int(index)] = InstanceFacts.from_dict(json.loads(text))
    _skip_duplicates(frame["path"].tolist(), facts, rows)
    known = [i for i, f in enumerate(facts) if f is not None and f.sop_instance_uid]
    choices = dict(zip(known, plan([facts[i] for i in known], config.select)))  # type: ignore[misc]

    todo = []
    for i, path in enumerate(frame["path"]):
        choice = choices.get(i)
        if i in rows:
            continue
        if choice is not None and not choice.caption:
            rows[i] = res.skipped_row(path, choice.reason, choice.kind, sop_instance_uid=choice.facts.sop_instance_uid,
                                      series_instance_uid=choice.facts.series_instance_uid)
            continue
        note = series_note(choice.facts.series_instance_uid, choice.series_size) \
            if choice is not None and choice.series_size > 1 else ""
        todo.append({"index": i, "path": path, "note": note})
    if on_rows is not None and rows:
        on_rows(res.table(rows.values()))  # carried over and skipped by selection: known before captioning

    model_batches: dict[float, int] = {}  # when a write task finished a batch -> its captioned images
    if todo:
        for batch in _caption_pipeline(pd.DataFrame(todo), config, plan_cfg).iter_batches(
                batch_format="pandas", batch_size=None):
            chunk = []
            for rec in batch.to_dict("records"):
                i = int(rec.pop("index"))
                at = rec.pop("done_at")
                if rec["status"] == "captioned":
                    model_batches[at] = model_batches.get(at, 0) + 1
                if rec["status"] == "failed" and rec["kind"] == "NotAnImageError" and not named[i]:
                    rec.update(status="skipped", kind="not_an_image")  # found in a folder: not ours to caption
                rows[i] = rec
                chunk.append(rec)
            if on_rows is not None:
                on_rows(res.table(chunk))
    table = res.table(rows[i] for i in range(len(frame)))
    # steady state: the images of every written batch after the first, over the time from the first to the last
    stamps = sorted(model_batches)
    steady = (sum(model_batches.values()) - model_batches[stamps[0]]) / (stamps[-1] - stamps[0]) \
        if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return BatchRun(table, time.perf_counter() - started, steady)


def _skip_duplicates(paths: list[str], facts: list[InstanceFacts | None], rows: dict[int, dict[str, Any]]) -> None:
    """One SOPInstanceUID, one report: a later input of a UID becomes a ``Duplicate`` row naming the
    first, and leaves the plan (its facts set to None). In the driver, over every input in order, so
    the rule holds however Ray spreads the files; content is read again only for a UID seen twice.
    An input carried over by ``--resume`` counts as seen, and keeps its row."""
    seen = SeenInstances(load=stages.load_source)
    for i, (path, fact) in enumerate(zip(paths, facts)):
        if fact is None or not fact.sop_instance_uid:
            continue
        duplicate = seen.check(fact.sop_instance_uid, path, path, i + 1)
        if duplicate is None:
            continue
        facts[i] = None
        if i not in rows:
            rows[i] = res.skipped_row(path, duplicate.reason, DUPLICATE, sop_instance_uid=fact.sop_instance_uid,
                                      series_instance_uid=fact.series_instance_uid)


def _caption_pipeline(todo: pd.DataFrame, config: BatchConfig, plan_cfg: dict[str, Any]) -> Any:
    """The streaming dataset prepare -> caption actors -> write, over the rows to caption."""
    output_dir = os.fspath(config.output_dir)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Ray 2.60 marks extra remote args deprecated but names no replacement for the actor's
        # restart budget; without them Ray Data restarts and retries forever (-1), and a batch that
        # kills its process every time would never end.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
        return _stages(todo, config, plan_cfg, output_dir)


def _stages(todo: pd.DataFrame, config: BatchConfig, plan_cfg: dict[str, Any], output_dir: str) -> Any:
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    blocks = _blocks(todo, plan_cfg["cpus"], config.batch_size)
    return (
        ray.data.from_pandas(blocks)
        .map_batches(stages.prepare_batch, batch_format="pandas", batch_size=config.batch_size,
                     fn_kwargs={"model": config.model, "frame": config.frame, "prompt": config.prompt},
                     compute=TaskPoolStrategy(size=min(plan_cfg["prepare_workers"], len(blocks))),
                     num_cpus=plan_cfg["prepare_cpus"])
        .map_batches(stages.CaptionActor, batch_format="pandas", batch_size=config.batch_size,
                     fn_constructor_kwargs={"model": config.model, "device": config.device, "dtype": config.dtype,
                                            "threads": plan_cfg["threads"],
                                            "generation": config.generation, "crash_once": config.crash_once,
                                            "prompt": config.prompt},
                     compute=ActorPoolStrategy(size=plan_cfg["actors"]), num_cpus=plan_cfg["actor_cpus"],
                     num_gpus=plan_cfg["gpu_each"] or None, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
        .map_batches(stages.write_batch, batch_format="pandas", batch_size=config.batch_size,
                     fn_kwargs={"output_dir": output_dir}, num_cpus=plan_cfg["prepare_cpus"] / 2)
    )
