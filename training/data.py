"""Dataset and collate: pictures through the inference path, captions the way generate() starts.

- Pictures: :func:`medblip_dicom.pixels.open_image` (DICOM through the core's pixel path, other
  formats with Pillow, both to 8-bit RGB), then the processor stored with the model, exactly
  what :meth:`medblip_dicom.captioner.Captioner.preprocess` does at inference.
- Captions of a model without a prompt (BLIP, GIT; :class:`CaptionDataset`, :class:`CaptionCollator`):
  tokenised per batch, padded to the longest caption in the batch, truncated at ``max_length``
  tokens. BLIP's ``generate()`` starts decoding from the ``bos_token_id`` of the text config
  (``[DEC]``), not from ``[CLS]``; the first token of every caption is replaced by it, so training
  sees the same start as inference. ``labels`` are the input ids with padding set to -100 (ignored
  by the loss); the model shifts them by one itself.
- Captions of a model given a prompt (:class:`PromptCaptionDataset`, :class:`PromptCaptionCollator`):
  each row is the picture's prompted inputs, exactly as at inference (the chat template's user turn
  with the image tokens, then the start of the reply), followed by the caption's tokens and the
  token that ends a caption. Only those caption tokens are learnt: the labels of the prompt and
  image tokens, and of padding (on the right), are -100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from medblip_dicom.modelinputs import SEQUENCE_KEYS, InputBuilder, collate
from medblip_dicom.pixels import open_image
from medblip_dicom.training.records import Record

#: Default caption length in tokens: covers the 95th percentile of ROCO captions (about 49
#: words; ~70 tokens with BLIP's BERT vocabulary, ~81 with the demo models' smaller one), checked in tests.
DEFAULT_MAX_LENGTH = 96


class CaptionDataset(Dataset):
    """``(pixel_values, caption, id)`` for each record, preprocessed as at inference."""

    def __init__(self, records: Sequence[Record], image_processor: Any) -> None:
        self.records = list(records)
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = open_image(record.image)
        pixel_values = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixel_values, "caption": record.caption, "id": record.id}


class CaptionCollator:
    """Batch pictures and tokenise captions (see the module docstring)."""

    def __init__(self, tokenizer: Any, bos_token_id: int, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.max_length = max_length

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        text = self.tokenizer([it["caption"] for it in items], padding="longest", truncation=True,
                              max_length=self.max_length, return_tensors="pt")
        input_ids = text["input_ids"].clone()
        input_ids[:, 0] = self.bos_token_id
        labels = input_ids.masked_fill(text["attention_mask"] == 0, -100)
        return {
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "input_ids": input_ids,
            "attention_mask": text["attention_mask"],
            "labels": labels,
        }


class PromptCaptionDataset(Dataset):
    """``(inputs, caption, id)`` for each record: the prompted model inputs of its picture, as at inference."""

    def __init__(self, records: Sequence[Record], inputs: InputBuilder) -> None:
        self.records = list(records)
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {"inputs": self.inputs.one(open_image(record.image)), "caption": record.caption, "id": record.id}


class PromptCaptionCollator:
    """Prompt + caption rows, right-padded, with labels on the caption tokens only (module docstring).

    `end_token_id` ends every caption (the token generation stops at); `caption_token_type` is the
    ``token_type_ids`` value of a caption token (:func:`medblip_dicom.families.caption_token_type`).
    """

    def __init__(self, tokenizer: Any, end_token_id: int, pad_token_id: int, caption_token_type: int = 0,
                 max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.end_token_id = end_token_id
        self.pad_token_id = pad_token_id
        self.caption_token_type = caption_token_type
        self.max_length = max_length

    def _row(self, inputs: dict[str, torch.Tensor], caption: str) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"][: self.max_length - 1]
        caption_ids = torch.tensor([*ids, self.end_token_id], dtype=torch.long)
        n = caption_ids.numel()
        row = {}
        for key, value in inputs.items():
            if key == "input_ids":
                row[key] = torch.cat([value[0], caption_ids])
            elif key in SEQUENCE_KEYS:
                fill = self.caption_token_type if key == "token_type_ids" else (1 if key == "attention_mask" else 0)
                row[key] = torch.cat([value[0], value.new_full((n,), fill)])
            else:
                row[key] = value  # pixels and image grids: batched as inference batches them
        row["labels"] = torch.cat([torch.full((inputs["input_ids"].shape[-1],), -100, dtype=torch.long), caption_ids])
        return row

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self._row(it["inputs"], it["caption"]) for it in items]
        length = max(r["input_ids"].numel() for r in rows)
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            if key == "labels" or key in SEQUENCE_KEYS:
                fill = -100 if key == "labels" else self.pad_token_id if key == "input_ids" else 0
                batch[key] = torch.stack([torch.cat([r[key], r[key].new_full((length - r[key].numel(),), fill)])
                                          for r in rows])
            else:
                batch[key] = collate([r[key] for r in rows])
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
