"""LoRA fine-tuning for models too large to train whole, and freezing a model's vision tower.

``--lora-rank R`` freezes the base model and adds rank-R adapters (PEFT's LoRA) to its linear
layers (``--lora-targets``, default PEFT's ``all-linear``: every linear layer but the output
layer). Only the adapters learn; the optimizer, checkpoints and resume are the trainer's own, so a
killed LoRA run resumes as exactly as a full one. The export (:mod:`.export`) writes either the
merged weights or the adapter with the base model's name; both carry the digest of the merged
weights, which is what a load of either computes.
"""

from __future__ import annotations

import logging
from typing import Any

from medblip_dicom.training.config import TrainConfig

logger = logging.getLogger(__name__)

#: Where the families keep their vision tower (the first that exists is frozen by --freeze-vision).
VISION_TOWERS = ("vision_model", "vision_tower", "model.vision_tower", "model.vision_model", "visual", "model.visual",
                 "git.image_encoder", "model.vision_encoder", "vision_encoder")


def vision_tower(model: Any) -> Any:
    """The model's vision encoder; ValueError naming the architecture when none is found."""
    for name in VISION_TOWERS:
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    raise ValueError(f"--freeze-vision: cannot find the vision tower of {type(model).__name__} "
                     f"(looked for {', '.join(VISION_TOWERS)})")


def lora_settings(config: TrainConfig) -> dict[str, Any]:
    """The adapter's settings as the provenance records them."""
    targets: Any = config.lora_targets
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return {"rank": config.lora_rank, "alpha": config.lora_alpha or 2 * config.lora_rank,
            "dropout": config.lora_dropout, "target_modules": targets}


def apply_lora(model: Any, config: TrainConfig) -> Any:
    """Freeze `model` and wrap it with LoRA adapters (a ``PeftModel``); ValueError when PEFT is missing."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("--lora-rank needs peft: pip install 'medblip-dicom[train]'") from None
    settings = lora_settings(config)
    lora = LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                      target_modules=settings["target_modules"], bias="none")
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as exc:
        raise ValueError(f"--lora-targets {config.lora_targets!r}: {str(exc).splitlines()[0][:200]}") from None
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    logger.info("LoRA rank %d: %d of %d parameters train (%.2f%%)", settings["rank"], trainable, total,
                100 * trainable / max(total, 1))
    return wrapped
