"""How captions are generated: one frozen settings object, validated when built (no torch needed).

The services' configuration (``[model]``) and the CLIs build their settings through this class,
so its checks are the only ones: an error names the setting (``num_beams must be >= 1``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GenerationSettings:
    """How captions are generated. Defaults suit ROCO-style captions (median ~20 words).

    ``no_repeat_ngram_size`` is the repetition guard: small captioning models otherwise loop
    ("the the the"). ``num_beams=1`` is greedy decoding. Generation never samples.
    """

    num_beams: int = 3
    max_new_tokens: int = 60
    min_new_tokens: int = 5
    no_repeat_ngram_size: int = 3
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_new_tokens", "min_new_tokens", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (deterministic: no sampling)."""
        kwargs: dict[str, Any] = asdict(self)
        kwargs["do_sample"] = False
        if self.num_beams == 1:
            kwargs.pop("length_penalty")
        return kwargs
