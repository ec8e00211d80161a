"""Optional speed-ups of a loaded BLIP model, each measurable on its own (``bench/gpu_bench.py``).

BLIP-1 in transformers has no SDPA or flash attention: its vision tower (about 111 of BLIP-base's
~116 GFLOP per caption at 384 x 384) computes attention with two matmuls and a softmax. Three
levers, none on by default until a GPU run has shown what each gives:

- :func:`use_sdpa_vision_attention` swaps the vision tower's attention for
  ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU).
  Same mathematics; in bf16 the rounding differs, so captions can differ in rare tokens: the
  benchmark counts how many.
- :func:`compile_vision` wraps the vision tower in ``torch.compile``.
- a static KV cache for the decoder, where ``generate`` accepts ``cache_implementation="static"``
  for BLIP (:func:`static_cache_supported` asks the installed transformers).

Only inference: the patched attention drops the attention probabilities (``output_attentions``
returns None) and applies no dropout.
"""

from __future__ import annotations

import logging
import types
from typing import Any

logger = logging.getLogger(__name__)


def _sdpa_forward(self: Any, hidden_states: Any, **kwargs: Any) -> tuple[Any, None]:
    """BlipAttention.forward with one fused attention call (same projections, scale and output)."""
    import torch.nn.functional as F

    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = (self.qkv(hidden_states)
           .reshape(bsz, tgt_len, 3, self.num_heads, embed_dim // self.num_heads)
           .permute(2, 0, 3, 1, 4))
    context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    context = context.permute(0, 2, 1, 3).reshape(bsz, tgt_len, embed_dim)
    return self.projection(context), None


def use_sdpa_vision_attention(model: Any) -> int:
    """Give every attention block of `model`'s vision tower the fused forward; returns how many.

    `model` is a ``BlipForConditionalGeneration`` (or anything with a ``vision_model``). Raises
    TypeError when the installed transformers' attention block does not look like the one this
    patch was written for (``qkv``, ``projection``, ``num_heads``, ``scale``), rather than
    computing something else silently.
    """
    from transformers.models.blip.modeling_blip import BlipAttention

    patched = 0
    for module in model.vision_model.modules():
        if isinstance(module, BlipAttention):
            missing = [name for name in ("qkv", "projection", "num_heads", "scale") if not hasattr(module, name)]
            if missing:
                raise TypeError(f"BlipAttention of this transformers version lacks {', '.join(missing)}: "
                                "the SDPA patch does not apply")
            module.forward = types.MethodType(_sdpa_forward, module)
            patched += 1
    logger.info("vision attention: %d blocks use scaled_dot_product_attention", patched)
    return patched


def compile_vision(model: Any, **compile_kwargs: Any) -> None:
    """Wrap `model`'s vision tower in ``torch.compile`` (compiles on the first batch of each shape)."""
    import torch

    model.vision_model.forward = torch.compile(model.vision_model.forward, **compile_kwargs)


def static_cache_supported(model: Any) -> bool:
    """Whether the installed transformers lets this model's ``generate`` use a static KV cache."""
    for candidate in (model, getattr(model, "text_decoder", None)):
        if candidate is not None and getattr(candidate, "_can_compile_fullgraph", False):
            return True
        if candidate is not None and getattr(candidate, "_supports_static_cache", False):
            return True
    return False
