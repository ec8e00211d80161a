"""The captioner: loading, device and dtype choice, batching, determinism, offline failure."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medblip_dicom.captioner import (
    Captioner,
    GenerationSettings,
    resolve_device,
    resolve_dtype,
    weights_digest,
)
from medblip_dicom.errors import MedblipError, ModelLoadError


def pictures(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


class TestLoading:
    def test_loads_directory_with_identity(self, captioner, tiny_model_dir):
        assert captioner.identity.name == tiny_model_dir.name
        assert len(captioner.identity.weights_sha256) == 64
        assert captioner.identity.device_uid.startswith("2.25.")
        assert captioner.identity.weights_sha256 == weights_digest(captioner.model)

    def test_provenance_file_names_the_model(self, tiny_model_dir, tmp_path):
        copy = tmp_path / "exported"
        shutil.copytree(tiny_model_dir, copy)
        (copy / "medblip_provenance.json").write_text('{"model_name": "roco-blip", "model_version": "2026.11"}')
        loaded = Captioner.load(copy, device="cpu", dtype="float32")
        assert (loaded.identity.name, loaded.identity.version) == ("roco-blip", "2026.11")

    def test_uncached_hub_id_offline_fails_with_one_sentence(self, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelLoadError) as info:
            Captioner.load("medblip-test/does-not-exist", device="cpu")
        message = str(info.value)
        assert "\n" not in message
        assert "--model /path/to/model-dir" in message and "Hugging Face cache" in message

    def test_missing_directory(self, tmp_path):
        with pytest.raises(ModelLoadError, match="does not exist"):
            Captioner.load(tmp_path / "nothing" / "here", device="cpu")

    def test_directory_without_model(self, tmp_path):
        (tmp_path / "empty-model").mkdir()
        with pytest.raises(ModelLoadError, match="not a usable model directory"):
            Captioner.load(tmp_path / "empty-model", device="cpu")

    def test_pickled_weights_are_refused(self, tiny_model_dir, tmp_path):
        from transformers import BlipForConditionalGeneration

        copy = tmp_path / "pickled"
        shutil.copytree(tiny_model_dir, copy)
        model = BlipForConditionalGeneration.from_pretrained(copy)
        (copy / "model.safetensors").unlink()
        torch.save(model.state_dict(), copy / "pytorch_model.bin")
        with pytest.raises(ModelLoadError):
            Captioner.load(copy, device="cpu")


class TestDeviceAndDtype:
    def test_auto_device_on_a_machine_without_gpu(self):
        if torch.cuda.is_available():
            assert resolve_device("auto").type == "cuda"
        else:
            assert resolve_device("auto").type in ("cpu", "mps")

    def test_explicit_cuda_without_cuda_says_what_to_do(self):
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        with pytest.raises(MedblipError, match="--device cpu"):
            resolve_device("cuda")

    def test_dtypes(self):
        cpu = torch.device("cpu")
        assert resolve_dtype("float32", cpu) == torch.float32
        assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
        assert resolve_dtype("auto", cpu) in (torch.float32, torch.bfloat16)
        with pytest.raises(MedblipError, match="float16 is not supported on the CPU"):
            resolve_dtype("float16", cpu)
        with pytest.raises(MedblipError, match="unknown dtype"):
            resolve_dtype("int8", cpu)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; exercised on a lent GPU")
    def test_cuda_half_precision_generates(self, tiny_model_dir):
        gpu = Captioner.load(tiny_model_dir, device="cuda", dtype="auto")
        assert gpu.dtype in (torch.bfloat16, torch.float16)
        assert all(gpu.caption(pictures(4)))


class TestGeneration:
    def test_batch_matches_single_and_is_deterministic(self, captioner):
        imgs = pictures(3)
        batch = captioner.caption(imgs)
        again = captioner.caption(imgs)
        singles = [captioner.caption([im])[0] for im in imgs]
        assert batch == again == singles
        assert all(isinstance(c, str) and c for c in batch)

    def test_a_caption_may_end_where_blip_ends_it_whatever_the_config_calls_its_end(self, tiny_model_dir, tmp_path):
        import json

        # Salesforce's BLIP checkpoints name an ordinary token (2, "[unused1]") as the text model's
        # end, but generate() stops at [SEP]: [SEP] must stay possible.
        copy = tmp_path / "eos-ordinary"
        shutil.copytree(tiny_model_dir, copy)
        config = json.loads((copy / "config.json").read_text())
        config["text_config"]["eos_token_id"] = 10  # an ordinary word of the tiny vocabulary
        (copy / "config.json").write_text(json.dumps(config))
        (copy / "generation_config.json").unlink(missing_ok=True)
        loaded = Captioner.load(copy, device="cpu", dtype="float32")
        sep = loaded.processor.tokenizer.sep_token_id
        assert sep not in loaded._suppressed_token_ids
        tok = loaded.processor.tokenizer
        assert set(loaded._suppressed_token_ids) >= {tok.pad_token_id, tok.cls_token_id, tok.mask_token_id,
                                                     tok.unk_token_id, tok.bos_token_id}

    def test_caption_never_contains_special_tokens(self, captioner):
        for text in captioner.caption(pictures(2, seed=3)):
            assert not any(tok in text.upper() for tok in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]"))

    def test_token_limits_are_respected(self, captioner):
        tok = captioner.processor.tokenizer
        short = GenerationSettings(num_beams=1, max_new_tokens=4, min_new_tokens=4, no_repeat_ngram_size=0)
        text = captioner.caption(pictures(1), short)[0]
        assert 1 <= len(tok(text, add_special_tokens=False)["input_ids"]) <= 4

    def test_bf16_weights_on_cpu(self, tiny_model_dir):
        bf16 = Captioner.load(tiny_model_dir, device="cpu", dtype="bfloat16",
                              settings=GenerationSettings(num_beams=1, max_new_tokens=8))
        assert bf16.dtype == torch.bfloat16
        assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}  # cast, not autocast
        fp32 = Captioner.load(tiny_model_dir, device="cpu", dtype="float32")
        assert bf16.identity == fp32.identity  # the digest is of the weights as stored
        out = bf16.caption(pictures(2))
        assert out == bf16.caption(pictures(2)) and all(out)

    def test_settings_are_validated(self):
        with pytest.raises(ValueError, match="num_beams"):
            GenerationSettings(num_beams=0)
        with pytest.raises(ValueError, match="min_new_tokens"):
            GenerationSettings(max_new_tokens=5, min_new_tokens=6)
