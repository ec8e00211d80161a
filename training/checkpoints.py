"""Checkpoints that a killed run can resume from exactly, written atomically.

A checkpoint is a folder ``checkpoints/step-00000123/`` holding accelerate's ``save_state`` (model
weights as safetensors, optimizer, scheduler, grad scaler and every RNG state) plus
``trainer_state.json`` (epoch, step, position in the epoch, best metric, loss history, resolved
config). It is written under a temporary name and renamed into place, so a folder with the final
name is always complete. accelerate loads the state files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medblip_dicom.errors import MedblipError
from medblip_dicom.fileio import fsync_dir

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
PREFIX = "step-"


class CheckpointError(MedblipError):
    """A checkpoint that cannot be resumed from: refused (pickled code) or unreadable."""


@dataclass
class TrainerState:
    """Where a run is; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    best_metric: float = -1.0
    best_epoch: int = 0
    loss_history: list[list[float]] = field(default_factory=list)  # [step, loss]
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        return cls(**json.loads((folder / STATE_FILE).read_text()))


def keep_one_name_per_tensor(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    """accelerate ``save_state`` pre-hook: name each tensor once in the model state to be saved.

    BLIP ties its text decoder's output layer to its word embeddings, so its state dict names one
    tensor twice. safetensors stores a tensor once: accelerate would drop the second name itself,
    with a "Removed shared tensor ... check by verifying that you don't receive any warning while
    reloading" warning at every checkpoint. The tie is handled here instead, by safetensors' own
    rule (the first name in sorted order stays); ``load_state`` restores both names, because
    safetensors' ``load_model`` knows the model's shared tensors.
    """
    for state in weights:
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, tensor in state.items():
            if hasattr(tensor, "untyped_storage"):
                storage = tensor.untyped_storage()
                key = (str(tensor.device), storage.data_ptr(), storage.nbytes(), tensor.storage_offset(),
                       tuple(tensor.shape))
                groups.setdefault(key, []).append(name)
        for names in groups.values():
            for name in sorted(names)[1:]:
                del state[name]


def save_checkpoint(accelerator: Any, state: TrainerState, checkpoints_dir: Path, keep_last: int) -> Path:
    """Save accelerator state + trainer state as ``step-NNNNNNNN`` atomically; prune to `keep_last`.

    Every process must call this (accelerate gathers state collectively); only the main process
    writes files.
    """
    final = checkpoints_dir / f"{PREFIX}{state.step:08d}"
    tmp = checkpoints_dir / f".tmp-{PREFIX}{state.step:08d}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank writes its own RNG state file into tmp first
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(checkpoints_dir)
        for old in list_checkpoints(checkpoints_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def load_checkpoint(accelerator: Any, folder: Path) -> TrainerState:
    """Restore accelerator state (model, optimizer, scheduler, scaler, RNG) and trainer state from `folder`.

    accelerate reads the state files with ``torch.load(weights_only=True)``: a file that holds
    pickled objects other than tensors and plain values (e.g. code planted in ``optimizer.bin``) is
    refused, never executed; that refusal is raised as :class:`CheckpointError` with one sentence.
    """
    import pickle
    import re

    try:
        accelerator.load_state(str(folder))
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it would call {found.group(1)}" if found else "refused by torch.load(weights_only=True)"
        raise CheckpointError(
            f"refusing to resume from {folder}: a state file holds pickled objects other than tensors "
            f"({what}); it was not written by medblip train or has been altered"
        ) from None
    return TrainerState.load(folder)
