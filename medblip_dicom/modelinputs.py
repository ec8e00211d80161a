"""What a model is given for its pictures: pixels alone, or pixels with a prompt; and one batch from many.

A model that captions a picture alone (BLIP, GIT) is given the processor's ``pixel_values``, one
tensor per batch, exactly as before any other family was served. A model given an instruction
(:func:`medblip_dicom.families.takes_prompt`) is given what its processor makes of the picture
and the prompt's text: ``input_ids`` with the image tokens in place, an attention mask, the
pixels and whatever else the family needs (``pixel_attention_mask``, ``token_type_ids``,
``image_grid_thw``, ...), as a dict of tensors. The prompt's text comes from the processor's chat
template when the model has one (a user turn holding the image and the prompt, then the start of
the assistant's turn), else it is the prompt itself.

Each picture is processed on its own (:class:`InputBuilder`), so a picture's inputs never depend
on its batch; :func:`collate` joins them: tensors are concatenated, token sequences are padded on
the left (a decoder-only model continues every row from its last position, so the prompts must end
together) and any other dimension that differs (pixels of another size, fewer image tiles) is
padded with zeros at its end, as the processors pad a batch themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["SEQUENCE_KEYS", "InputBuilder", "as_numpy", "collate", "prompt_text", "to_device"]

#: Inputs laid out along the token sequence: padded on the left in a batch.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
#: What processors return that is not a model input at inference.
_NOT_INPUTS = ("labels",)


def prompt_text(processor: Any, prompt: str) -> tuple[str, bool]:
    """The text a prompt becomes for `processor`, and whether tokenising it adds special tokens.

    With a chat template: one user turn (the image, then the prompt) and the start of the reply;
    the template holds the special tokens itself. Without one (PaliGemma): the processor's image
    placeholder, then the prompt; the processor adds what its format wants around them.
    """
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False
    placeholder = getattr(processor, "boi_token", None) or getattr(processor, "image_token", None)
    return (f"{placeholder}{prompt}" if isinstance(placeholder, str) else prompt), True


class InputBuilder:
    """Pictures in, the model's inputs out (see the module docstring); picklable for worker processes."""

    def __init__(self, processor: Any, text: str | None = None, add_special_tokens: bool = True) -> None:
        self.processor = processor
        self.text = text
        self.add_special_tokens = add_special_tokens

    @classmethod
    def for_prompt(cls, processor: Any, prompt: str) -> InputBuilder:
        """The builder for a model given `prompt` (empty: a model that captions pictures alone)."""
        if not prompt:
            return cls(processor)
        text, special = prompt_text(processor, prompt)
        return cls(processor, text, special)

    @property
    def pad_token_id(self) -> int:
        """The token a left-padded sequence starts with (the tokenizer's padding, else its end token)."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return int(pad or 0)

    def one(self, image: Any) -> dict[str, torch.Tensor]:
        """The prompted inputs of one picture (a batch of one)."""
        out = self.processor(images=[image], text=[self.text], return_tensors="pt",
                             add_special_tokens=self.add_special_tokens)
        return {k: v for k, v in out.items() if k not in _NOT_INPUTS and isinstance(v, torch.Tensor)}

    def __call__(self, images: Sequence[Any]) -> torch.Tensor | dict[str, torch.Tensor]:
        """The inputs of `images` as one batch: ``pixel_values`` alone, or a dict when there is a prompt."""
        if self.text is None:
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return collate([self.one(image) for image in images], self.pad_token_id)


def _left_pad(value: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    missing = length - value.shape[-1]
    if missing <= 0:
        return value
    pad = value.new_full((*value.shape[:-1], missing), fill)
    return torch.cat([pad, value], dim=-1)


def _pad_trailing(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad every dimension after the first to the largest size among `values`, at its end."""
    shapes = {tuple(v.shape[1:]) for v in values}
    if len(shapes) == 1:
        return values
    ndim = max(v.dim() for v in values)
    if any(v.dim() != ndim for v in values):
        raise ValueError(f"cannot batch model inputs of shapes {sorted(shapes)}")
    target = [max(v.shape[d] for v in values) for d in range(1, ndim)]
    padded = []
    for v in values:
        widths: list[int] = []
        for d in reversed(range(1, ndim)):
            widths += [0, target[d - 1] - v.shape[d]]
        padded.append(torch.nn.functional.pad(v, widths))
    return padded


def collate(items: Sequence[Any], pad_token_id: int = 0) -> Any:
    """One batch from the inputs of several pictures (tensors, arrays, or dicts of either)."""
    first = items[0]
    if not isinstance(first, Mapping):
        return torch.cat(_pad_trailing([torch.as_tensor(x) for x in items]))
    length = max(int(torch.as_tensor(item["input_ids"]).shape[-1]) for item in items) if "input_ids" in first else 0
    batch = {}
    for key in first:
        values = [torch.as_tensor(item[key]) for item in items]
        if key in SEQUENCE_KEYS and length:
            values = [_left_pad(v, length, pad_token_id if key == "input_ids" else 0) for v in values]
        else:
            values = _pad_trailing(values)
        batch[key] = torch.cat(values)
    return batch


def to_device(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Inputs on `device`; floating-point ones (pixels) in the model's `dtype`, the others as they are."""
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device, dtype) for k, v in inputs.items()}
    tensor = torch.as_tensor(inputs)
    if tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def as_numpy(inputs: Any) -> Any:
    """Inputs as numpy arrays (plain bytes across a process boundary, not torch's shared memory)."""
    if isinstance(inputs, Mapping):
        return {k: as_numpy(v) for k, v in inputs.items()}
    return inputs.numpy() if isinstance(inputs, torch.Tensor) else inputs
