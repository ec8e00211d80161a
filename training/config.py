"""The training configuration: one typed dataclass, validated when built, saved with the run."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from medblip_dicom.training.data import DEFAULT_MAX_LENGTH
from medblip_dicom.training.records import normalise_split

PRECISIONS = ("auto", "no", "bf16", "fp16")
#: How the best model is exported: merged weights, or the base model's name plus the LoRA adapter.
EXPORTS = ("merged", "adapter")


@dataclass
class TrainConfig:
    """Everything a run depends on. ``medblip train`` fills it from a TOML file and flags."""

    data: str
    base_model: str
    out: str
    train_split: str = "train"
    val_split: str = "validation"
    subset: str = "radiology"
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    precision: str = "auto"
    device: str = "auto"
    freeze_vision: bool = False
    seed: int = 42
    max_length: int = DEFAULT_MAX_LENGTH
    save_every: int = 0
    keep_last: int = 2
    eval_num_beams: int = 1
    eval_max_new_tokens: int = 60
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_workers: int = 0
    validate_files: bool = True
    model_name: str | None = None
    log_every: int = 10
    prompt: str | None = None  # a model given an instruction: default the base model's, else the standard one
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA adapters of this rank, the base model frozen
    lora_alpha: int | None = None  # LoRA scaling numerator; default 2 x rank
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # PEFT target_modules: "all-linear" or comma-separated module names
    export: str = "merged"

    def __post_init__(self) -> None:
        self.train_split = normalise_split(self.train_split)
        self.val_split = normalise_split(self.val_split)
        positive = ("epochs", "batch_size", "grad_accum", "max_length", "keep_last", "eval_num_beams",
                    "eval_max_new_tokens", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.save_every < 0 or self.num_workers < 0:
            raise ValueError("save_every and num_workers must be >= 0")
        if self.lora_rank < 0 or (self.lora_alpha is not None and self.lora_alpha < 1):
            raise ValueError("lora_rank must be >= 0 and lora_alpha >= 1")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.export not in EXPORTS:
            raise ValueError(f"export must be one of {', '.join(EXPORTS)}, got {self.export!r}")
        if self.export == "adapter" and not self.lora_rank:
            raise ValueError("export = adapter needs LoRA training (lora_rank > 0); "
                             "full fine-tuning exports merged weights")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")

    @classmethod
    def from_sources(cls, file: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
        """Values from a TOML (or JSON) file, then the non-None `overrides` (command-line flags)."""
        values: dict[str, Any] = {}
        if file is not None:
            path = Path(file)
            text = path.read_text(encoding="utf-8")
            loaded = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
            values.update(loaded.get("train", loaded))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        missing = [name for name in ("data", "base_model", "out") if name not in values]
        if missing:
            raise ValueError(f"missing required option(s): {', '.join(missing)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
