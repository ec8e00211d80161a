"""Fine-tune a captioning model (BLIP or any served family): one readable loop on Hugging Face ``accelerate``.

Why accelerate and not ``transformers.Trainer``: the loop stays ours and short (nanoGPT style:
one function, one checkpoint, one metrics line per evaluation), while accelerate supplies what is
hard to write well by hand: mixed precision (bf16 autocast, fp16 with a GradScaler), gradient
accumulation, DDP under ``torchrun`` / ``accelerate launch`` with sharded data loading, and
``save_state`` / ``load_state`` with optimizer, scheduler, scaler and RNG states.
``transformers.Trainer`` would hide the loop and choose checkpoints by loss unless customised,
whereas the best model here is chosen by validation BLEU from generated captions.

Any family :mod:`medblip_dicom.families` serves trains here: a model without a prompt (BLIP, GIT)
learns its captions as before; a model given an instruction learns the caption that follows its
prompt, with the loss on the caption tokens only (:mod:`.data`). ``lora_rank`` > 0 trains LoRA
adapters on a frozen base (:mod:`.lora`) and exports merged weights or base + adapter (:mod:`.export`).

The run writes into ``config.out``::

    config.json          resolved configuration
    data/                validation reports: <split>-validation.json counts, <split>-dropped.csv
    metrics.jsonl        one JSON line per evaluation (epoch end)
    checkpoints/step-N/  the last `keep_last` checkpoints (resume with --resume)
    best/                best model by validation corpus BLEU-4: save_pretrained + provenance
    curves.png           loss and BLEU curves, written at the end
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medblip_dicom.training.checkpoints import (
    TrainerState, keep_one_name_per_tensor, latest_checkpoint, load_checkpoint, save_checkpoint,
)
from medblip_dicom.training.config import TrainConfig
from medblip_dicom.training.lora import apply_lora, vision_tower
from medblip_dicom.training.data import (
    CaptionCollator, CaptionDataset, EpochShuffleSampler, PromptCaptionCollator, PromptCaptionDataset,
)
from medblip_dicom.training.records import Record, detect_layout, load_records
from medblip_dicom.training.validation import validate_records, write_validation_report

logger = logging.getLogger(__name__)


def _mixed_precision(config: TrainConfig, use_cpu: bool) -> str:
    if config.precision != "auto":
        return config.precision
    if not use_cpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # CPU: full precision keeps runs exactly reproducible


def _load_split(config: TrainConfig, split: str, limit: int | None, accelerator: Any, out: Path) -> list[Record]:
    """Load and (on rank 0) validate one split; every rank gets the same kept rows."""
    records = load_records(config.data, split, config.subset)
    if limit is not None:
        records = records[:limit]
    kept_file = out / "data" / f"{split}-kept.json"
    if accelerator.is_main_process:
        if config.validate_files:
            report = validate_records(records)
            write_validation_report(report, out / "data", split)
            kept = report.kept
        else:
            kept = records
        kept_file.parent.mkdir(parents=True, exist_ok=True)
        kept_file.write_text(json.dumps([r.id for r in kept]))
    accelerator.wait_for_everyone()
    keep = set(json.loads(kept_file.read_text()))
    return [r for r in records if r.id in keep]


@dataclass
class Base:
    """The model training starts from, its processor, its family and the prompt it is trained with."""

    model: Any
    processor: Any
    model_type: str
    architecture: str
    prompt: str


def _load_base(config: TrainConfig) -> Base:
    from medblip_dicom.errors import ModelLoadError
    from medblip_dicom.families import resolve_prompt
    from medblip_dicom.identity import read_provenance
    from medblip_dicom.modelload import load_model

    try:
        # Strict: a base model with missing or unused weights would start training half random.
        loaded = load_model(config.base_model, config.base_model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load base model {config.base_model!r} ({str(exc).splitlines()[0][:200]}); pass a local "
            "model directory (save_pretrained) or a cached hub id"
        ) from None
    local = Path(config.base_model).expanduser()
    prompt = resolve_prompt(loaded.model_type, loaded.architecture, config.base_model, given=config.prompt,
                            recorded=read_provenance(local if local.is_dir() else None).get("prompt"))
    return Base(loaded.model, loaded.processor, loaded.model_type, loaded.architecture, prompt)


def _data(base: Base, records: list[Record], config: TrainConfig) -> tuple[Any, Any]:
    """The data set and collator for the base model's family (see :mod:`.data`)."""
    from medblip_dicom.families import caption_token_type
    from medblip_dicom.modelinputs import InputBuilder

    if not base.prompt:
        text_config = base.model.config.get_text_config()
        collate = CaptionCollator(base.processor.tokenizer, text_config.bos_token_id, config.max_length)
        return CaptionDataset(records, base.processor.image_processor), collate
    inputs = InputBuilder.for_prompt(base.processor, base.prompt)
    tokenizer = base.processor.tokenizer
    ends = base.model.generation_config.eos_token_id
    ends = [ends] if isinstance(ends, int) else list(ends or [])
    end = tokenizer.eos_token_id if tokenizer.eos_token_id in ends or not ends else ends[0]
    collate = PromptCaptionCollator(tokenizer, end, inputs.pad_token_id, caption_token_type(base.model_type),
                                    config.max_length)
    return PromptCaptionDataset(records, inputs), collate


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final trainer state as a dict."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    out = Path(config.out)
    use_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    _reset_accelerator_state()
    accelerator = Accelerator(mixed_precision=_mixed_precision(config, use_cpu),
                              gradient_accumulation_steps=config.grad_accum, cpu=use_cpu)
    accelerator.register_save_state_pre_hook(keep_one_name_per_tensor)
    set_seed(config.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    accelerator.wait_for_everyone()

    base = _load_base(config)
    model, processor = base.model, base.processor
    if config.freeze_vision:
        vision_tower(model).requires_grad_(False)
    if config.lora_rank:
        model = apply_lora(model, config)
        if config.freeze_vision:  # the vision tower's adapters stay at zero
            vision_tower(model.get_base_model()).requires_grad_(False)
    train_records = _load_split(config, config.train_split, config.max_train_samples, accelerator, out)
    val_records = _load_split(config, config.val_split, config.max_eval_samples, accelerator, out)
    if not train_records:
        raise ValueError(f"no usable training rows in {config.data} ({config.train_split}); see {out / 'data'}")

    dataset, collate = _data(base, train_records, config)
    sampler = EpochShuffleSampler(len(dataset), config.seed)
    # A generator of its own: starting an iteration draws a seed from it, not from torch's global
    # RNG, whose state a checkpoint restores and dropout consumes (a resumed run starts one more).
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                         collate_fn=collate, num_workers=config.num_workers,
                                         generator=torch.Generator().manual_seed(config.seed))
    # The schedule is laid out for one process; accelerate steps it once per process.
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    no_decay = ("bias", "layernorm", "layer_norm", "LayerNorm")
    params = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not any(k in n for k in no_decay)],
         "weight_decay": config.weight_decay},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    state = TrainerState(config=config.to_dict())
    checkpoints = out / "checkpoints"
    if resume:
        found = latest_checkpoint(checkpoints)
        if found is None:
            logger.warning("--resume: no checkpoint in %s, starting from the beginning", checkpoints)
        else:
            state = load_checkpoint(accelerator, found)  # weights_only: pickled code is refused
            state.config = config.to_dict()
            logger.info("resumed from %s (epoch %d, step %d)", found, state.epoch, state.step)

    layout, _ = detect_layout(config.data)
    samples_per_step = config.batch_size * accelerator.num_processes
    while state.epoch < config.epochs:
        epoch = state.epoch
        model.train()
        # accelerate's loader re-applies its own iteration count to the sampler on every pass, so
        # the epoch goes through the loader (a loader made by skip_first_batches starts at 0).
        loader.set_epoch(epoch)
        batches = loader
        if state.batch_in_epoch:
            batches = accelerator.skip_first_batches(loader, state.batch_in_epoch)
            batches.set_epoch(epoch)
        bar = None
        if progress and accelerator.is_main_process:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), initial=state.batch_in_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="batch")
        started, seen, running = time.perf_counter(), 0, []
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.batch_in_epoch += 1
            seen += samples_per_step
            running.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            if accelerator.sync_gradients:
                state.step += 1
                if state.step % config.log_every == 0:
                    state.loss_history.append([state.step, sum(running) / len(running)])
                    running = []
                if config.save_every and state.step % config.save_every == 0:
                    save_checkpoint(accelerator, state, checkpoints, config.keep_last)
            if bar is not None:
                rate = seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{rate:.1f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        if running:
            state.loss_history.append([state.step, sum(running) / len(running)])
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        epoch_seconds = time.perf_counter() - started

        metrics = _evaluate(accelerator, model, processor, val_records, config, out, base.prompt)
        if accelerator.is_main_process:
            metrics.update(epoch=state.epoch, step=state.step, lr=scheduler.get_last_lr()[0],
                           train_loss=state.loss_history[-1][1] if state.loss_history else None,
                           train_samples_per_s=round(seen / max(epoch_seconds, 1e-9), 2))
            with (out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
            logger.info("epoch %d: %s", state.epoch, {k: metrics[k] for k in ("bleu4", "sentence_bleu4")})
            state.eval_history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            if metrics["bleu4"] > state.best_metric:
                state.best_metric, state.best_epoch = metrics["bleu4"], state.epoch
                _export_best(accelerator.unwrap_model(model), base, config, state, layout,
                             len(train_records), len(val_records), metrics)
        state = _broadcast_state(accelerator, state)
        save_checkpoint(accelerator, state, checkpoints, config.keep_last)

    if accelerator.is_main_process:
        from medblip_dicom.training.plot import plot_curves

        plot_curves(state, out / "curves.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return asdict(state)


def _reset_accelerator_state() -> None:
    """Let a second ``train()`` in the same process choose its own precision.

    accelerate keeps its state in a process-wide singleton that refuses a different
    ``mixed_precision`` once set. Outside ``torchrun`` (one process) it is safe to forget it.
    """
    import os

    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and hasattr(AcceleratorState, "_reset_state"):
        AcceleratorState._reset_state(reset_partial_state=True)


def _broadcast_state(accelerator: Any, state: TrainerState) -> TrainerState:
    """Rank 0 owns the best-metric bookkeeping; every rank saves the same trainer state."""
    if accelerator.num_processes == 1:
        return state
    from accelerate.utils import broadcast_object_list

    box = [asdict(state)]
    broadcast_object_list(box, from_process=0)
    return TrainerState(**box[0])


def _evaluate(accelerator: Any, model: Any, processor: Any, records: list[Record], config: TrainConfig,
              out: Path, prompt: str) -> dict[str, Any]:
    """Caption the validation rows (sharded over ranks) and score them on rank 0."""
    from accelerate.utils import gather_object

    from medblip_dicom.captioner import CaptionGenerator
    from medblip_dicom.generation import GenerationSettings
    from medblip_dicom.training.evaluation import generate_predictions, score, write_predictions

    model.eval()
    net = accelerator.unwrap_model(model)
    settings = GenerationSettings(num_beams=config.eval_num_beams, max_new_tokens=config.eval_max_new_tokens,
                                  min_new_tokens=1)
    captioner = CaptionGenerator(net, processor, accelerator.device, torch.float32, settings, prompt=prompt)
    shard = records[accelerator.process_index::accelerator.num_processes]
    with accelerator.autocast():
        rows = generate_predictions(captioner, shard, batch_size=config.batch_size)
    rows = gather_object(rows)
    model.train()
    if not accelerator.is_main_process:
        return {}
    order = {r.id: i for i, r in enumerate(records)}
    rows = sorted(rows, key=lambda row: order.get(row[0], 0))
    write_predictions(rows, out / "predictions-validation.csv")
    return score(rows)


def _export_best(model: Any, base: Base, config: TrainConfig, state: TrainerState, layout: str,
                 n_train: int, n_val: int, metrics: dict[str, Any]) -> None:
    from medblip_dicom.training.export import export_lora, export_model
    from medblip_dicom.training.lora import lora_settings

    provenance = {
        "model_name": config.model_name or Path(config.out).resolve().name,
        "base_model": config.base_model,
        "prompt": base.prompt or None,
        "training": "lora" if config.lora_rank else "full",
        "data": {"root": str(config.data), "layout": layout, "subset": config.subset,
                 "train_split": config.train_split, "train_rows": n_train,
                 "val_split": config.val_split, "val_rows": n_val},
        "epochs_trained": state.epoch,
        "step": state.step,
        "val_metrics": {k: v for k, v in metrics.items() if k.startswith(("bleu", "sentence"))},
        "metric_definitions": {"tokenisation": metrics.get("tokenisation"), "smoothing": metrics.get("smoothing")},
        "config": config.to_dict(),
    }
    target = Path(config.out) / "best"
    if config.lora_rank:
        provenance["lora"] = lora_settings(config)
        export_lora(model, base.processor, target, provenance, base_model=config.base_model, mode=config.export)
    else:
        export_model(model, base.processor, target, provenance)
