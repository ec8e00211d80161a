"""Dataset and collate: pictures through the inference path, captions the way generate() starts.

- Pictures: :func:`medblip_dicom.pixels.open_image` (DICOM through the core's pixel path, other
  formats with Pillow, both to 8-bit RGB), then the image processor stored with the model, exactly
  what :meth:`medblip_dicom.captioner.Captioner.preprocess` does at inference.
- Captions: tokenised per batch, padded to the longest caption in the batch, truncated at
  ``max_length`` tokens. BLIP's ``generate()`` starts decoding from the ``bos_token_id`` of the text
  config (``[DEC]``), not from ``[CLS]``; the first token of every caption is replaced by it, so
  training sees the same start as inference. ``labels`` are the input ids with padding set to -100
  (ignored by the loss); the model shifts them by one itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

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
