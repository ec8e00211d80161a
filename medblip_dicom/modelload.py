"""Load a captioning model strictly: the weights in the files are exactly the weights that run.

transformers fills any weight a checkpoint lacks with random values and drops any weight the class
does not use, with only a logged warning (``output_loading_info`` returns them as data). A model
loaded that way is not the model its files claim: its captions change from run to run while its
reports carry the same weights digest and the same UIDs. So a load with a *missing*, *unexpected*
or *mismatched* weight is refused here with one sentence naming the first few keys, and a model
directory whose configuration names another architecture is refused before any weight is read.

Used by the captioner (:mod:`medblip_dicom.captioner`) and by training's base-model load, so that
neither serves nor fine-tunes a half-random model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from medblip_dicom.errors import ModelLoadError

__all__ = ["BLIP_ARCHITECTURE", "check_architecture", "describe_loading_problems", "load_strict"]

logger = logging.getLogger(__name__)

#: The architecture this release captions with (``config.json``'s ``architectures``).
BLIP_ARCHITECTURE = "BlipForConditionalGeneration"
_BLIP_MODEL_TYPE = "blip"
_SHOWN_KEYS = 3


def check_architecture(config: Any, label: str) -> None:
    """Refuse a model configuration that is not a BLIP captioning model.

    `config` is the model's loaded ``PretrainedConfig``; `label` names the model in the message.
    Raises :class:`~medblip_dicom.errors.ModelLoadError` naming the architecture found.
    """
    model_type = str(getattr(config, "model_type", "") or "")
    architectures = [str(a) for a in (getattr(config, "architectures", None) or [])]
    found = ", ".join(architectures) or f"model_type {model_type!r}"
    if model_type != _BLIP_MODEL_TYPE:
        raise ModelLoadError(
            f"{label} holds a {found} model (model_type {model_type!r}), which medblip-dicom cannot serve: "
            f"it captions with {BLIP_ARCHITECTURE} models; pass a BLIP captioning model directory"
        )
    if architectures and BLIP_ARCHITECTURE not in architectures:
        raise ModelLoadError(
            f"{label} holds a {found} model, not a captioning model ({BLIP_ARCHITECTURE}); "
            "pass a BLIP captioning model directory"
        )


def _first(keys: Iterable[Any]) -> str:
    names = sorted(str(k if not isinstance(k, tuple) else k[0]) for k in keys)
    shown = ", ".join(names[:_SHOWN_KEYS])
    return shown + (f" and {len(names) - _SHOWN_KEYS} more" if len(names) > _SHOWN_KEYS else "")


def describe_loading_problems(info: dict[str, Any]) -> str | None:
    """One clause per kind of weight problem in transformers' loading info, or None when it is clean."""
    parts = []
    for key, what in (("missing_keys", "missing from the weight files (they would be random)"),
                      ("unexpected_keys", "in the weight files but not used by the model"),
                      ("mismatched_keys", "of the wrong shape"),
                      ("error_msgs", "not loadable")):
        found = list(info.get(key) or ())
        if found:
            parts.append(f"{len(found)} weight{'s' if len(found) != 1 else ''} {what} ({_first(found)})")
    return "; ".join(parts) or None


def load_strict(model_class: Any, where: str, label: str, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(where, **kwargs)`` from safetensors, refusing any weight problem.

    Raises :class:`~medblip_dicom.errors.ModelLoadError` (naming `label` and the first keys) when a
    weight is missing, unexpected or of the wrong shape (a wrong shape is loaded as "mismatched" so
    that it can be named, then refused); ``OSError``/``ValueError`` from transformers
    (no such model, no safetensors file) pass through for the caller to word.
    """
    from transformers.utils import logging as hf_logging

    # Wrong shapes are reported (and refused below) rather than raised without naming the weight.
    kwargs.setdefault("ignore_mismatched_sizes", True)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    if not logger.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()  # a quiet command prints one line, not a loading bar
    try:
        model, info = model_class.from_pretrained(where, use_safetensors=True, output_loading_info=True, **kwargs)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelLoadError(f"{label}: the weights do not fit the model ({first[0][:200] if first else exc}); "
                             "the model directory is damaged or holds another architecture") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    problems = describe_loading_problems(info)
    if problems:
        raise ModelLoadError(
            f"{label} does not load strictly: {problems}; a report must not claim weights it was not made "
            "with, so the model is refused (re-export it with save_pretrained)"
        )
    return model
