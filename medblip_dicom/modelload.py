"""Load a captioning model strictly: the weights in the files are exactly the weights that run.

transformers fills any weight a checkpoint lacks with random values and drops any weight the class
does not use, with only a logged warning (``output_loading_info`` returns them as data). A model
loaded that way is not the model its files claim: its captions change from run to run while its
reports carry the same weights digest and the same UIDs. So a load with a *missing*, *unexpected*
or *mismatched* weight is refused here with one sentence naming the first few keys, and a model
directory whose configuration names an architecture we cannot serve is refused before any weight
is read (:func:`check_architecture`).

What we serve is what transformers loads with ``AutoModelForImageTextToText``
(:mod:`medblip_dicom.families`): BLIP, GIT, PaliGemma, Idefics3/SmolVLM, Gemma 3, Qwen2-VL and
the rest of its mapping, each with its processor (:func:`load_processor`); a directory holding a
LoRA adapter is loaded as its base model with the adapter merged (:func:`merge_adapter`).

Used by the captioner (:mod:`medblip_dicom.captioner`) and by training's base-model load, so that
neither serves nor fine-tunes a half-random model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medblip_dicom.errors import ModelLoadError
from medblip_dicom.families import family_status, generation_class

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "BLIP_ARCHITECTURE", "LoadedModel", "adapter_base", "check_architecture",
           "describe_loading_problems", "is_adapter_dir", "load_model", "load_processor", "load_strict", "merge_adapter",
           "model_kind"]

logger = logging.getLogger(__name__)

#: The default model's architecture (``config.json``'s ``architectures``).
BLIP_ARCHITECTURE = "BlipForConditionalGeneration"
_SHOWN_KEYS = 3


def check_architecture(config: Any, label: str) -> str:
    """Return the generation class that serves `config`, or refuse a model we cannot serve.

    `config` is the model's loaded ``PretrainedConfig``; `label` names the model in the message.
    A ``model_type`` that ``AutoModelForImageTextToText`` does not map, or a configuration whose
    ``architectures`` list another head of that type (a BLIP retrieval model, say), raises
    :class:`~medblip_dicom.errors.ModelLoadError` naming the architecture found.
    """
    model_type = str(getattr(config, "model_type", "") or "")
    architectures = [str(a) for a in (getattr(config, "architectures", None) or [])]
    found = ", ".join(architectures) or f"model_type {model_type!r}"
    wanted = generation_class(model_type)
    if wanted is None:
        raise ModelLoadError(
            f"{label} holds a {found} model (model_type {model_type!r}), which medblip-dicom cannot serve: it "
            "captions with the image-to-text models transformers loads with AutoModelForImageTextToText (BLIP, "
            "GIT, PaliGemma, Idefics3/SmolVLM, Gemma 3, Qwen2-VL, ...; medblip doctor lists them)"
        )
    if architectures and wanted not in architectures:
        raise ModelLoadError(
            f"{label} holds a {found} model, not a captioning model ({wanted}); "
            f"pass a {wanted} model directory"
        )
    return wanted


def load_processor(where: str, label: str, model_type: str, **kwargs: Any) -> Any:
    """The processor saved with the model (``AutoProcessor``), or one sentence saying why it cannot be built.

    ``OSError`` (files not found) passes through for the caller to word.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(where, **kwargs)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here; each becomes one sentence
        status = family_status(model_type)
        why = status.reason if not status.servable else f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        raise ModelLoadError(f"{label}: its processor cannot be built on this install ({why}); "
                             "medblip doctor lists the families this install can serve") from None


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


# -- base model + LoRA adapter exports ------------------------------------------------------------
#
# ``medblip train --lora-rank R --export adapter`` writes the adapter (``adapter_config.json`` and
# ``adapter_model.safetensors``, PEFT's layout), the processor and the provenance, but not the base
# weights: ``adapter_config.json`` names the base model (a directory or a hub id). Loading such a
# directory loads the base strictly, applies the adapter and merges it into the weights, so that
# captioning runs one plain model at full speed and the weights digest is that of the merged
# weights, the same digest a merged export of the same training has. An adapter with a weight the
# model lacks, or lacking one its configuration implies, is refused like a damaged checkpoint.
# PEFT is needed only here (it is part of the ``train`` extra).

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_dir(directory: Path | None) -> bool:
    """True for a directory holding an adapter and no full model (``config.json``)."""
    return (directory is not None and (directory / ADAPTER_CONFIG).is_file()
            and not (directory / "config.json").is_file())


def adapter_base(directory: Path) -> str:
    """The base model an adapter directory names (``base_model_name_or_path``); ModelLoadError if none."""
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{directory / ADAPTER_CONFIG} cannot be read ({exc}); re-export the model") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise ModelLoadError(f"{directory / ADAPTER_CONFIG} names no base model (base_model_name_or_path); "
                             "re-export the model, or export merged weights")
    return base


def merge_adapter(base: Any, directory: Path, label: str) -> Any:
    """Apply the adapter in `directory` to the loaded `base` model strictly and return the merged model.

    Raises :class:`~medblip_dicom.errors.ModelLoadError` when PEFT is not installed, the adapter is
    not in safetensors, or its weights do not match the adapter the configuration describes.
    """
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(f"{label} holds an adapter configuration but no {ADAPTER_WEIGHTS} (adapters are "
                             "loaded from safetensors only); re-export the model")
    try:
        from peft import PeftModel
        from peft.utils import get_peft_model_state_dict
    except ImportError:
        raise ModelLoadError(f"{label} is a LoRA adapter on {adapter_base(directory)}; loading it needs peft: "
                             "pip install 'medblip-dicom[train]', or export merged weights") from None
    from safetensors import safe_open

    try:
        model = PeftModel.from_pretrained(base, str(directory), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        raise ModelLoadError(f"{label}: the adapter does not fit its base model ({first[0][:200] if first else exc}); "
                             "the adapter was trained on another base model or is damaged") from None
    with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as fh:
        found = set(fh.keys())
    expected = set(get_peft_model_state_dict(model).keys())
    problems = describe_loading_problems({"missing_keys": sorted(expected - found),
                                          "unexpected_keys": sorted(found - expected)})
    if problems:
        raise ModelLoadError(f"{label} does not load strictly: {problems}; a report must not claim weights it "
                             "was not made with, so the model is refused (re-export it)")
    merged = model.merge_and_unload()
    logger.debug("merged adapter %s into its base model", directory)
    return merged


@dataclass
class LoadedModel:
    """A model loaded strictly, with its processor; `base` names the base model of an adapter export."""

    model: Any
    processor: Any
    model_type: str
    architecture: str
    base: str | None = field(default=None)


def load_model(where: str, label: str, **kwargs: Any) -> LoadedModel:
    """Load the model and processor at `where` (a directory or hub id) strictly; `label` names it in errors.

    A directory holding a LoRA adapter loads its base model strictly, then merges the adapter
    (:func:`merge_adapter`); its processor is the one saved beside the
    adapter. `kwargs` go to ``from_pretrained`` (``local_files_only``). Raises ModelLoadError for a
    model that is not what it claims; ``OSError``/``ValueError`` (nothing there) pass through.
    """
    import transformers
    from transformers import AutoConfig

    local = Path(where)
    if local.is_dir() and is_adapter_dir(local):
        base = adapter_base(local)
        inner = load_model(base, f"{label} (its base model {base})", **kwargs)
        processor = load_processor(where, label, inner.model_type, **kwargs)
        return LoadedModel(merge_adapter(inner.model, local, label), processor, inner.model_type, inner.architecture,
                           base=base)
    config = AutoConfig.from_pretrained(where, **kwargs)
    architecture = check_architecture(config, label)
    model_type = str(config.model_type)
    processor = load_processor(where, label, model_type, **kwargs)
    model = load_strict(getattr(transformers, architecture), where, label, **kwargs)
    return LoadedModel(model, processor, model_type, architecture)


def model_kind(where: str, label: str, **kwargs: Any) -> tuple[str, str]:
    """``(model_type, architecture)`` of the model at `where` from its configuration alone (an adapter
    export: its base model's), checked by :func:`check_architecture`; no weights are read."""
    from transformers import AutoConfig

    local = Path(where)
    if local.is_dir() and is_adapter_dir(local):
        return model_kind(adapter_base(local), f"{label} (its base model)", **kwargs)
    config = AutoConfig.from_pretrained(where, **kwargs)
    return str(config.model_type), check_architecture(config, label)
