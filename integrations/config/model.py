"""``[model]``: which model captions, asked what, where, and how it generates."""

from __future__ import annotations

import re
from dataclasses import dataclass

from medblip_dicom.generation import GenerationSettings

from medblip_dicom.integrations.config.checks import ConfigError, fail, shown


@dataclass(frozen=True)
class ModelConfig:
    """Which model captions (asked what), where, and how it generates (checked by :class:`GenerationSettings`)."""

    path: str = ""
    prompt: str = ""  # a model given an instruction: empty = its provenance's, else the standard one
    device: str = "auto"
    dtype: str = "auto"
    num_beams: int = 3
    max_new_tokens: int = 60
    min_new_tokens: int = 5
    no_repeat_ngram_size: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            fail("model", "path", f"must be a model folder or hub id (text), got {shown(self.path)}")
        if not isinstance(self.prompt, str):
            fail("model", "prompt", f"must be text (the instruction for a model that takes one), "
                                    f"got {shown(self.prompt)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            fail("model", "dtype", f"{self.dtype!r}: use auto, float32, bfloat16 or float16")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            fail("model", "device", f"{self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        try:
            self.generation  # noqa: B018 - built once here to check the values
        except ValueError as exc:
            raise ConfigError(f"[model] {exc}") from None

    @property
    def generation(self) -> GenerationSettings:
        """The generation settings these values describe."""
        return GenerationSettings(num_beams=self.num_beams, max_new_tokens=self.max_new_tokens,
                                  min_new_tokens=self.min_new_tokens, no_repeat_ngram_size=self.no_repeat_ngram_size)
