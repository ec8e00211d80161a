"""A model directory that is not what it claims is refused before it writes a report.

- a BLIP checkpoint with a weight removed, with an extra weight, or with a weight of the wrong
  shape; a CLIP model saved with ``save_pretrained`` (no image-to-text architecture); a BLIP
  retrieval model: each is refused by ``medblip caption`` with one line naming the problem (and
  the first keys), and no SR is written (the other families' damaged checkpoints:
  ``tests/core/test_families.py``);
- the weights-digest cache certifies only the weights that were loaded: files replaced while a
  model loads do not leave a cache entry that gives the new files the old weights' digest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medblip_dicom.apps.main import main
from medblip_dicom.captioner import Captioner, weights_digest
from medblip_dicom.errors import ModelLoadError


def _rewrite_weights(model_dir: Path, change) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _copy(tiny_model_dir: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(tiny_model_dir, copy)
    return copy


def _caption(model_dir: Path, source: str, out: Path, capsys) -> tuple[int, str]:
    rc = main(["caption", source, "--model", str(model_dir), "--out", str(out), "--device", "cpu",
               "--dtype", "float32", "--num-beams", "1", "--max-new-tokens", "6", "-q"])
    return rc, capsys.readouterr().err


def _drop_one(tensors: dict[str, torch.Tensor]) -> None:
    del tensors["text_decoder.bert.encoder.layer.0.attention.output.LayerNorm.weight"]


def _add_one(tensors: dict[str, torch.Tensor]) -> None:
    tensors["text_decoder.bert.encoder.layer.0.attacker.weight"] = torch.zeros(4)


def _reshape_one(tensors: dict[str, torch.Tensor]) -> None:
    name = "text_decoder.bert.encoder.layer.0.attention.output.LayerNorm.weight"
    tensors[name] = torch.zeros(tensors[name].numel() + 1)


@pytest.mark.parametrize("change, words", [
    (_drop_one, ["1 weight missing", "text_decoder.bert.encoder.layer.0.attention.output.LayerNorm.weight"]),
    (_add_one, ["1 weight in the weight files but not used", "attacker.weight"]),
    (_reshape_one, ["1 weight of the wrong shape", "layer.0.attention.output.LayerNorm.weight"]),
], ids=["missing", "unexpected", "wrong-shape"])
def test_a_damaged_blip_checkpoint_is_refused_and_writes_nothing(tiny_model_dir, td, tmp_path, capsys, change,
                                                                  words):
    damaged = _copy(tiny_model_dir, tmp_path, "damaged")
    _rewrite_weights(damaged, change)
    out = tmp_path / "srs"
    rc, stderr = _caption(damaged, td("CT_small.dcm"), out, capsys)
    assert rc == 2
    line = stderr.strip()
    assert line.count("\n") == 0, stderr
    for word in words:
        assert word in line
    assert not out.exists() or not any(out.iterdir())


def test_a_model_that_is_not_an_image_to_text_model_is_refused_naming_its_architecture(td, tmp_path, capsys):
    from transformers import CLIPConfig, CLIPModel

    clip = tmp_path / "clip-model"
    tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=dict(tiny, vocab_size=100),
                         vision_config=dict(tiny, image_size=32, patch_size=16), projection_dim=16)).save_pretrained(clip)
    out = tmp_path / "srs"
    rc, stderr = _caption(clip, td("CT_small.dcm"), out, capsys)
    assert rc == 2
    line = stderr.strip().splitlines()[-1]
    assert "CLIPModel" in line and "cannot serve" in line and "AutoModelForImageTextToText" in line
    assert not out.exists() or not any(out.iterdir())


def test_a_blip_model_that_is_not_a_captioner_is_refused(tiny_model_dir, tmp_path):
    import json

    retrieval = _copy(tiny_model_dir, tmp_path, "retrieval")
    config = json.loads((retrieval / "config.json").read_text())
    config["architectures"] = ["BlipForImageTextRetrieval"]
    (retrieval / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not a captioning model"):
        Captioner.load(retrieval, device="cpu", dtype="float32")


def test_files_replaced_during_a_load_are_not_certified_by_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    """The digest recorded is always that of the weights that run, and a cache entry never pairs
    the files found after a load with weights read before it."""
    from medblip_dicom.training.demo_model import build_blip_model

    model_dir = _copy(tiny_model_dir, tmp_path, "swapped")
    other = build_blip_model(tmp_path / "other", size="tiny", seed=1)
    from transformers import BlipForConditionalGeneration

    real_load = BlipForConditionalGeneration.from_pretrained.__func__

    def load_then_swap(cls, *args, **kwargs):
        loaded = real_load(cls, *args, **kwargs)
        shutil.copyfile(other / "model.safetensors", model_dir / "model.safetensors.new")
        (model_dir / "model.safetensors.new").replace(model_dir / "model.safetensors")
        return loaded

    monkeypatch.setattr(BlipForConditionalGeneration, "from_pretrained", classmethod(load_then_swap))
    first = Captioner.load(model_dir, device="cpu", dtype="float32")
    assert first.identity.weights_sha256 == weights_digest(first.model)
    monkeypatch.undo()

    second = Captioner.load(model_dir, device="cpu", dtype="float32")
    assert second.identity.weights_sha256 == weights_digest(second.model)
    assert second.identity.weights_sha256 != first.identity.weights_sha256
