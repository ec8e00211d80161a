"""Training every family with the same trainer: full and LoRA, exact resume, exports that load again.

- the loss is on the caption tokens only: a prompted row's labels are -100 on the prompt, the image
  tokens and the padding, and the caption ends with the token generation stops at;
- GIT, PaliGemma, Idefics3 (SmolVLM) and Gemma 3 each train a few steps fully and with LoRA; a run
  killed after a mid-epoch checkpoint resumes to bit-identical weights; the best model exports
  (merged, or base + adapter) as a directory that loads again with the digest its provenance records;
- merged and adapter exports of one training carry the same digest; an adapter with a weight
  missing or planted, or whose base model changed, is refused;
- a decoder-only tiny model learns the synthetic set (BLEU far above the untrained model's).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medblip_dicom.captioner import Captioner
from medblip_dicom.errors import ModelLoadError
from medblip_dicom.families import DEFAULT_PROMPT
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.modelinputs import InputBuilder
from medblip_dicom.training import trainer
from medblip_dicom.training.config import TrainConfig
from medblip_dicom.training.data import PromptCaptionCollator
from medblip_dicom.training.trainer import train
from tests.support.families import ARCHITECTURES


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _config(data: Path, model: Path, out: Path, **extra) -> TrainConfig:
    values = dict(epochs=2, batch_size=4, lr=1e-3, device="cpu", seed=3, max_length=24, save_every=3, keep_last=4,
                  max_train_samples=16, max_eval_samples=4, eval_max_new_tokens=6)
    return TrainConfig(data=str(data), base_model=str(model), out=str(out), **{**values, **extra})


def _killed_then_resumed(config: TrainConfig, monkeypatch, after_step: int = 3) -> None:
    real = trainer.save_checkpoint

    def save_then_die(accelerator, state, *args, **kwargs):
        folder = real(accelerator, state, *args, **kwargs)
        if state.step == after_step:
            raise Killed
        return folder

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(config, progress=False)
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    train(config, resume=True, progress=False)


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").iterdir(), key=lambda p: p.name)[-1]
    return load_file(last / "model.safetensors")


def _loads_as_exported(run: Path, family: str) -> Captioner:
    provenance = json.loads((run / "best" / "medblip_provenance.json").read_text())
    loaded = Captioner.load(run / "best", device="cpu", dtype="float32",
                            settings=GenerationSettings(num_beams=1, max_new_tokens=4, min_new_tokens=1))
    assert loaded.identity.weights_sha256 == provenance["weights_sha256"]
    assert loaded.identity.architecture == provenance["architecture"] == ARCHITECTURES[family]
    assert loaded.prompt == (provenance["prompt"] or "")
    return loaded


def test_a_prompted_row_learns_only_its_caption(family_model, synthetic_root):
    from PIL import Image

    processor = Captioner.load(family_model("paligemma"), device="cpu", dtype="float32").processor
    inputs = InputBuilder.for_prompt(processor, DEFAULT_PROMPT)
    tokenizer = processor.tokenizer
    collate = PromptCaptionCollator(tokenizer, tokenizer.eos_token_id, inputs.pad_token_id, caption_token_type=1)
    picture = Image.new("RGB", (40, 30), 128)
    items = [{"inputs": inputs.one(picture), "caption": "Round opacity."},
             {"inputs": inputs.one(picture), "caption": "Chest radiograph showing a linear atelectasis."}]
    batch = collate(items)
    prompt_length = items[0]["inputs"]["input_ids"].shape[1]
    caption = tokenizer("Round opacity.", add_special_tokens=False)["input_ids"]
    labels = batch["labels"][0].tolist()
    assert labels[:prompt_length] == [-100] * prompt_length  # prompt and image tokens: no loss
    assert labels[prompt_length:prompt_length + len(caption) + 1] == [*caption, tokenizer.eos_token_id]
    assert set(labels[prompt_length + len(caption) + 1:]) <= {-100}  # padding, on the right
    assert batch["token_type_ids"][0, prompt_length] == 1  # PaliGemma's suffix, as its generate() marks it
    assert batch["input_ids"][0, :prompt_length].tolist() == items[0]["inputs"]["input_ids"][0].tolist()


@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_each_family_trains_fully_and_with_lora_resumes_exactly_and_exports(family, family_model, kaggle_root,
                                                                             tmp_path, monkeypatch):
    model = family_model(family)
    for name, extra in (("full", {}), ("lora", {"lora_rank": 4, "export": "adapter"})):
        straight, resumed = tmp_path / f"{name}-straight", tmp_path / f"{name}-resumed"
        train(_config(kaggle_root, model, straight, **extra), progress=False)
        _killed_then_resumed(_config(kaggle_root, model, resumed, **extra), monkeypatch)
        a, b = _last_weights(straight), _last_weights(resumed)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{family} {name}: resumed weights differ"
        if name == "lora":
            assert any("lora_" in k for k in a)
            assert (straight / "best" / "adapter_model.safetensors").is_file()
            assert not (straight / "best" / "model.safetensors").exists()
        loaded = _loads_as_exported(straight, family)
        again = _loads_as_exported(resumed, family)
        assert loaded.identity.weights_sha256 == again.identity.weights_sha256


def test_merged_and_adapter_exports_carry_one_digest_and_a_changed_base_is_refused(family_model, kaggle_root,
                                                                                   tmp_path):
    base = tmp_path / "base"
    shutil.copytree(family_model("idefics3"), base)
    runs = {}
    for mode in ("merged", "adapter"):
        runs[mode] = tmp_path / mode
        train(_config(kaggle_root, base, runs[mode], epochs=1, lora_rank=4, export=mode, precision="bf16"),
              progress=False)
    merged = json.loads((runs["merged"] / "best" / "medblip_provenance.json").read_text())
    adapter = json.loads((runs["adapter"] / "best" / "medblip_provenance.json").read_text())
    assert merged["weights_sha256"] == adapter["weights_sha256"]
    assert merged["base_weights_sha256"] == adapter["base_weights_sha256"] != merged["weights_sha256"]
    assert adapter["lora"]["rank"] == 4 and adapter["training"] == "lora"
    captions = [_loads_as_exported(runs[m], "idefics3").caption([_picture()]) for m in ("merged", "adapter")]
    assert captions[0] == captions[1]

    for change, words in ((lambda t: t.pop(sorted(t)[0]), "1 weight missing"),
                          (lambda t: t.update({"base_model.model.planted.lora_A.weight": torch.zeros(4, 4)}),
                           "1 weight in the weight files but not used")):
        damaged = tmp_path / f"damaged-{len(words)}"
        shutil.copytree(runs["adapter"] / "best", damaged)
        adapter_weights = load_file(damaged / "adapter_model.safetensors")
        change(adapter_weights)
        save_file(adapter_weights, damaged / "adapter_model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ModelLoadError, match=words):
            Captioner.load(damaged, device="cpu", dtype="float32")

    tensors = load_file(base / "model.safetensors")  # the base model is retrained or replaced later
    name = sorted(k for k in tensors if k.endswith("norm.weight"))[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="no longer holds the weights it was trained on"):
        Captioner.load(runs["adapter"] / "best", device="cpu", dtype="float32")


def _picture():
    from PIL import Image

    return Image.new("RGB", (48, 40), 90)


def test_a_decoder_only_model_learns_the_synthetic_set(synthetic_root, tmp_path, capsys):
    from medblip_dicom.apps.main import main
    from medblip_dicom.training import synthetic
    from medblip_dicom.training.demo_families import build_family_model

    model = build_family_model(tmp_path / "small-idefics3", "idefics3", size="small", seed=0,
                               captions=[*synthetic.captions(), DEFAULT_PROMPT])
    flags = ["--data", str(synthetic_root), "--split", "test", "--device", "cpu", "--dtype", "float32",
             "--num-beams", "1", "--max-new-tokens", "16", "-q"]
    assert main(["evaluate", "--model", str(model), "--out", str(tmp_path / "untrained"), *flags]) == 0
    untrained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = tmp_path / "run"
    started = time.perf_counter()
    assert main(["train", "--data", str(synthetic_root), "--base-model", str(model), "--out", str(run),
                 "--epochs", "7", "--batch-size", "8", "--lr", "3e-3", "--seed", "0", "--device", "cpu",
                 "--max-length", "24", "--keep-last", "1", "--max-eval-samples", "16", "-q"]) == 0
    seconds = time.perf_counter() - started
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run / "best"), *flags]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print(f"\nIdefics3 (small) trained in {seconds:.0f} s: held-out BLEU-4 {trained['bleu4']:.3f} "
          f"(untrained {untrained['bleu4']:.3f}) on {trained['samples']} images")
    assert trained["samples"] == untrained["samples"] == 48
    # The captions' shared words alone ("chest radiograph showing a ... in the ... lobe") give about
    # 0.55: above 0.7 the finding and the zone are read from the picture.
    assert trained["bleu4"] >= 0.7 and trained["bleu4"] >= untrained["bleu4"] + 0.5
