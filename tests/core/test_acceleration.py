"""The optional speed-ups compute what the model computed before (medblip_dicom/acceleration.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import BlipForConditionalGeneration

from medblip_dicom import acceleration


@pytest.fixture
def blip(tiny_model_dir) -> BlipForConditionalGeneration:
    return BlipForConditionalGeneration.from_pretrained(tiny_model_dir).eval()


def test_sdpa_vision_attention_gives_the_same_features_and_captions(blip) -> None:
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, blip.config.vision_config.image_size, blip.config.vision_config.image_size)
    with torch.inference_mode():
        eager = blip.vision_model(pixel_values=pixels).last_hidden_state
        eager_tokens = blip.generate(pixel_values=pixels, max_new_tokens=12, min_new_tokens=12, num_beams=1)
        patched = acceleration.use_sdpa_vision_attention(blip)
        fused = blip.vision_model(pixel_values=pixels).last_hidden_state
        fused_tokens = blip.generate(pixel_values=pixels, max_new_tokens=12, min_new_tokens=12, num_beams=1)
    assert patched == blip.config.vision_config.num_hidden_layers
    assert torch.allclose(eager, fused, atol=1e-4), (eager - fused).abs().max()
    assert torch.equal(eager_tokens, fused_tokens)


def test_sdpa_patch_refuses_an_attention_block_it_does_not_know(blip) -> None:
    from transformers.models.blip.modeling_blip import BlipAttention

    block = next(m for m in blip.vision_model.modules() if isinstance(m, BlipAttention))
    del block.qkv
    with pytest.raises(TypeError, match="qkv"):
        acceleration.use_sdpa_vision_attention(blip)

