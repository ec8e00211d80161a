"""Which image-to-text model families this install can serve, and how each is prompted (no torch needed).

transformers 5 loads every captioning or vision-language model through one auto class,
``AutoModelForImageTextToText``: its mapping from a configuration's ``model_type`` to a
generation class is the list of architectures medblip-dicom serves (BLIP, BLIP-2, InstructBLIP,
GIT, Florence-2, Idefics3/SmolVLM, PaliGemma, Gemma 3/MedGemma, Qwen2-VL, Qwen2.5-VL, LLaVA, ...).
What differs between them, and is written down here once:

- whether a model takes an instruction: BLIP, GIT and vision-encoder-decoder models caption a
  picture alone; every other family is given a prompt (:data:`DEFAULT_PROMPT` unless the model's
  provenance, ``[model] prompt`` or ``--prompt`` says otherwise);
- whether its processor can be built here: a processor with a video part (Qwen2-VL, SmolVLM,
  InternVL, ...) needs torchvision, which a CPU-only install may lack;
- the token type a caption token has in training: what the model's own ``generate()`` gives a new
  token (PaliGemma marks its suffix with 1; the others mark text with 0).
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass

__all__ = ["DEFAULT_PROMPT", "FAMILIES", "Family", "FamilyStatus", "caption_token_type", "family_status",
           "generation_class", "resolve_prompt", "takes_prompt"]

#: The instruction a model that takes one is given when nothing else names one.
DEFAULT_PROMPT = "Describe this radiology image in one sentence."

#: Model types that caption a picture alone: their input is pixels, a prompt would be a text prefix.
NO_PROMPT_TYPES = frozenset({"blip", "git", "vision-encoder-decoder"})

#: Model types whose generated tokens carry token type 1 (the others: 0).
_SUFFIX_TOKEN_TYPE_ONE = frozenset({"paligemma"})


@dataclass(frozen=True)
class Family:
    """A family people ask for by name, and the ``model_type`` its configuration has."""

    label: str
    model_type: str
    example: str


#: The families the documentation and ``medblip doctor`` list (any other model type in the mapping works too).
FAMILIES: tuple[Family, ...] = (
    Family("BLIP (the default)", "blip", "Salesforce/blip-image-captioning-base"),
    Family("BLIP-2", "blip-2", "Salesforce/blip2-opt-2.7b"),
    Family("InstructBLIP", "instructblip", "Salesforce/instructblip-vicuna-7b"),
    Family("GIT", "git", "microsoft/git-base"),
    Family("Florence-2", "florence2", "florence-community/Florence-2-base"),
    Family("Idefics3 / SmolVLM (Idefics3 layout)", "idefics3", "HuggingFaceTB/SmolVLM-256M-Instruct"),
    Family("SmolVLM", "smolvlm", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"),
    Family("PaliGemma", "paligemma", "google/paligemma-3b-mix-224"),
    Family("Gemma 3 / MedGemma", "gemma3", "google/medgemma-4b-it"),
    Family("Qwen2-VL", "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct"),
    Family("Qwen2.5-VL", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct"),
    Family("LLaVA", "llava", "llava-hf/llava-1.5-7b-hf"),
)


def generation_class(model_type: str) -> str | None:
    """The class ``AutoModelForImageTextToText`` loads for `model_type`, or None when it serves no such model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type)
    return name if isinstance(name, str) else None


def takes_prompt(model_type: str) -> bool:
    """True for a model that is given an instruction (see the module docstring)."""
    return model_type not in NO_PROMPT_TYPES


def resolve_prompt(model_type: str, architecture: str, label: str, *, given: str | None = None,
                   recorded: object = None) -> str:
    """The prompt a model is given: `given` (``--prompt`` / ``[model] prompt``), else the one its
    provenance `recorded`, else :data:`DEFAULT_PROMPT`; empty for a model that takes none.

    Raises :class:`~medblip_dicom.errors.ModelLoadError` when a prompt is given to a model that
    captions without one (it would be ignored, or worse, taken as the start of the caption).
    The prompt is written into every SR as it is returned: whitespace runs become one space, and a
    character a DICOM text refuses is an error for a given prompt (TextError naming it) and is
    dropped from a recorded one.
    """
    from medblip_dicom.dicomtext import dicom_text
    from medblip_dicom.errors import ModelLoadError

    given = " ".join(given.split()) if given is not None else None
    if not takes_prompt(model_type):
        if given:
            raise ModelLoadError(f"{label} is a {architecture} model, which captions a picture without a prompt; "
                                 "drop --prompt (or [model] prompt)")
        return ""
    if given:
        return dicom_text(given, "UT", what="the prompt (--prompt or [model] prompt)")
    if isinstance(recorded, str) and recorded.strip():
        return dicom_text(recorded, "UT", what="the recorded prompt", machine=True) or DEFAULT_PROMPT
    return DEFAULT_PROMPT


def caption_token_type(model_type: str) -> int:
    """The ``token_type_ids`` value of a caption token in training (what ``generate()`` gives a new token)."""
    return 1 if model_type in _SUFFIX_TOKEN_TYPE_ONE else 0


@dataclass(frozen=True)
class FamilyStatus:
    """Whether this install can serve a model type, and if not, the sentence saying why."""

    model_type: str
    architecture: str | None
    servable: bool
    reason: str


def family_status(model_type: str) -> FamilyStatus:
    """Can this install load `model_type`'s model class and build its processor? (Nothing is downloaded.)"""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    architecture = generation_class(model_type)
    if architecture is None:
        return FamilyStatus(model_type, None, False,
                            f"transformers {transformers.__version__} has no image-text-to-text model for it")
    if not hasattr(transformers, architecture):
        return FamilyStatus(model_type, architecture, False, f"transformers cannot import {architecture}")
    processor = PROCESSOR_MAPPING_NAMES.get(model_type)
    if isinstance(processor, str) and hasattr(transformers, processor):
        parameters = inspect.signature(getattr(transformers, processor).__init__).parameters
        if "video_processor" in parameters and importlib.util.find_spec("torchvision") is None:
            return FamilyStatus(model_type, architecture, False,
                                f"its processor ({processor}) has a video part, which needs torchvision")
    return FamilyStatus(model_type, architecture, True, "")
