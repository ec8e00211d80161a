"""Any image-to-text family through the same pipeline: GIT, PaliGemma, Idefics3 (SmolVLM) and Gemma 3.

- each captions real DICOM into an SR through ``medblip caption`` that dciodvfy accepts, whose
  device observer names the architecture and, for a model given one, records the prompt;
- the prompt is part of the identity: two prompts are two authors (other SR and device UIDs), the
  same prompt gives the same UIDs; it comes from ``--prompt``, else the model's provenance, else the
  standard one; a model that takes none refuses one;
- decoder-only batches are padded on the left and only the generated tokens become the caption:
  a batch of prompts of different lengths captions as each prompt alone;
- strict loading holds for every family: a damaged checkpoint is refused; a family whose processor
  cannot be built here is refused with one sentence naming what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from medblip_dicom.apps.main import main
from medblip_dicom.captioner import Captioner, weights_digest
from medblip_dicom.errors import ModelLoadError
from medblip_dicom.families import DEFAULT_PROMPT
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.modelinputs import InputBuilder
from medblip_dicom.report import report_uids
from medblip_dicom.report_view import CaptionReport
from tests.support.families import ARCHITECTURES, PROMPTED

SHORT = GenerationSettings(num_beams=2, max_new_tokens=8, min_new_tokens=2)


def pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (40 + 12 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


def _caption(model, out, sources, capsys, *extra: str) -> tuple[int, str]:
    rc = main(["caption", *sources, "--model", str(model), "--out", str(out), "--device", "cpu", "--dtype", "float32",
               "--num-beams", "2", "--max-new-tokens", "8", "--min-new-tokens", "2", "-q", *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_each_family_captions_real_dicom_into_a_valid_sr(family, family_model, td, tmp_path, capsys, validate_sr):
    out = tmp_path / "srs"
    rc, err = _caption(family_model(family), out, [td("CT_small.dcm"), td("RG1_UNCI.dcm")], capsys)
    assert rc == 0, err
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 2
    for path in files:
        validate_sr(path)
        report = CaptionReport.from_file(path)
        assert report.caption and report.architecture == ARCHITECTURES[family]
        assert report.model_version.startswith("sha256-")
        assert report.prompt == (DEFAULT_PROMPT if family in PROMPTED else "")


@pytest.mark.parametrize("family", PROMPTED)
def test_a_batch_captions_as_its_pictures_alone(family, family_model):
    captioner = Captioner.load(family_model(family), device="cpu", dtype="float32", settings=SHORT)
    images = pictures(3)
    batch = captioner.caption(images)
    assert batch == [captioner.caption([im])[0] for im in images]
    assert all(batch)


def test_decoder_only_batches_pad_on_the_left_and_keep_only_the_generated_tokens(family_model):
    captioner = Captioner.load(family_model("idefics3"), device="cpu", dtype="float32",
                               settings=GenerationSettings(num_beams=1, max_new_tokens=6, min_new_tokens=6))
    short = InputBuilder.for_prompt(captioner.processor, "Findings?")
    long = InputBuilder.for_prompt(captioner.processor, "Describe the findings of this radiograph in one short sentence.")
    one, two = pictures(2)
    items = [short.one(one), long.one(two)]
    batch = captioner.collate(items)
    pad = captioner.inputs.pad_token_id
    assert items[0]["input_ids"].shape[1] < items[1]["input_ids"].shape[1]
    assert batch["input_ids"][0, 0] == pad and batch["attention_mask"][0, 0] == 0  # padded on the left
    assert batch["input_ids"][1, -1] == items[1]["input_ids"][0, -1]  # every prompt ends at the last column
    together = captioner.generate(batch)
    assert together == [captioner.generate(items[0])[0], captioner.generate(items[1])[0]]
    tokenizer = captioner.processor.tokenizer
    for caption in together:  # six generated tokens, not the prompt's dozens
        assert len(tokenizer(caption, add_special_tokens=False)["input_ids"]) <= 6


def test_the_prompt_is_part_of_the_identity_and_of_the_sr(family_model, td, tmp_path, capsys):
    model = family_model("gemma3")
    first, second, again = tmp_path / "default", tmp_path / "asked", tmp_path / "again"
    assert _caption(model, first, [td("CT_small.dcm")], capsys)[0] == 0
    assert _caption(model, second, [td("CT_small.dcm")], capsys, "--prompt", "Name  the modality.")[0] == 0
    assert _caption(model, again, [td("CT_small.dcm")], capsys, "--prompt", "Name the modality.")[0] == 0
    (a,), (b,), (c,) = (list(p.glob("*.dcm")) for p in (first, second, again))
    ra, rb, rc = (CaptionReport.from_file(p) for p in (a, b, c))
    assert (ra.prompt, rb.prompt) == (DEFAULT_PROMPT, "Name the modality.")
    assert ra.weights_sha256 == rb.weights_sha256  # the same weights ...
    assert a.name != b.name and ra.device_uid != rb.device_uid  # ... asked something else: another author
    assert b.name == c.name and rb.device_uid == rc.device_uid  # the same question: the same report


def test_the_prompt_comes_from_the_flag_else_the_provenance_else_the_standard_one(family_model, tmp_path):
    model = tmp_path / "with-provenance"
    shutil.copytree(family_model("idefics3"), model)
    assert Captioner.load(model, device="cpu", dtype="float32").prompt == DEFAULT_PROMPT
    (model / "medblip_provenance.json").write_text(json.dumps({"prompt": "Caption this  chest film."}))
    recorded = Captioner.load(model, device="cpu", dtype="float32")
    assert recorded.prompt == recorded.identity.prompt == "Caption this chest film."
    given = Captioner.load(model, device="cpu", dtype="float32", prompt="Which organ?")
    assert given.identity.prompt == "Which organ?"
    assert given.identity.weights_sha256 == recorded.identity.weights_sha256
    assert given.identity.content_key != recorded.identity.content_key


def test_a_model_without_a_prompt_keeps_its_uids_and_refuses_a_prompt(captioner, tiny_model_dir, td, tmp_path,
                                                                         capsys):
    import pydicom

    identity = captioner.identity
    assert (identity.prompt, identity.architecture) == ("", "BlipForConditionalGeneration")
    assert identity.content_key == identity.weights_sha256  # BLIP's report UIDs are what they always were
    source = pydicom.dcmread(td("CT_small.dcm"))
    from medblip_dicom.uids import stable_uid

    assert report_uids(source, identity)[1] == stable_uid("medblip-dicom/sr", str(source.SOPInstanceUID),
                                                          identity.weights_sha256)
    rc, err = _caption(tiny_model_dir, tmp_path / "srs", [td("CT_small.dcm")], capsys, "--prompt", "Describe it.")
    assert rc == 2 and "without a prompt" in err and "BlipForConditionalGeneration" in err
    assert not (tmp_path / "srs").exists()


def test_a_damaged_decoder_only_checkpoint_is_refused(family_model, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(family_model("paligemma"), damaged)
    tensors = load_file(damaged / "model.safetensors")
    dropped = sorted(k for k in tensors if "layernorm" in k.lower() or "norm" in k)[0]
    del tensors[dropped]
    save_file(tensors, damaged / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="1 weight missing") as refused:
        Captioner.load(damaged, device="cpu", dtype="float32")
    assert "\n" not in str(refused.value)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_a_family_whose_processor_needs_torchvision_is_refused_in_one_sentence(tmp_path):
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLImageProcessor
    from tokenizers import Tokenizer, models

    folder = tmp_path / "qwen2-vl"
    Qwen2VLConfig(vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2},
                  text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64},
                  architectures=["Qwen2VLForConditionalGeneration"]).save_pretrained(folder)
    Qwen2VLImageProcessor().save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                            unk_token="<unk>").save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    with pytest.raises(ModelLoadError) as refused:
        Captioner.load(folder, device="cpu", dtype="float32")
    message = str(refused.value)
    assert "torchvision" in message and "Qwen2VLProcessor" in message and "\n" not in message


def test_the_digest_is_that_of_the_weights_that_run(family_model):
    captioner = Captioner.load(family_model("paligemma"), device="cpu", dtype="float32")
    assert captioner.identity.weights_sha256 == weights_digest(captioner.model)
    assert captioner.identity.architecture == "PaliGemmaForConditionalGeneration"


def test_a_cpu_pool_prepares_prompted_inputs_as_the_calling_process_does(family_model, td, tmp_path):
    from medblip_dicom.api import caption_dicoms
    from medblip_dicom.cpupool import CpuPool

    captioner = Captioner.load(family_model("paligemma"), device="cpu", dtype="float32", settings=SHORT)
    files = [td("CT_small.dcm"), td("MR_small.dcm"), td("RG1_UNCI.dcm")]
    inline = [(o.sr_sop_instance_uid, o.caption) for o in
              caption_dicoms(files, model=captioner, output_dir=tmp_path / "inline", batch_size=2, workers=0)]
    with CpuPool(captioner, 1) as pool:
        pooled = [(o.sr_sop_instance_uid, o.caption) for o in
                  caption_dicoms(files, model=captioner, output_dir=tmp_path / "pool", batch_size=2, pool=pool)]
    assert pooled == inline and all(caption for _, caption in inline)


def test_doctor_lists_the_families_this_install_can_serve():
    from medblip_dicom.apps.doctor import check_families

    findings = {f.what.split(":")[0]: f for f in check_families()}
    for label in ("BLIP (the default)", "GIT", "PaliGemma", "Idefics3 / SmolVLM (Idefics3 layout)", "Gemma 3 / MedGemma"):
        assert findings[label].status == "ok", findings[label]
    qwen = findings["Qwen2-VL"]
    if importlib.util.find_spec("torchvision") is None:
        assert qwen.status == "warn" and "torchvision" in qwen.what and "torchvision" in qwen.hint
    else:
        assert qwen.status == "ok"


def test_caption_dicom_takes_a_prompt_for_a_model_it_loads(family_model, td):
    from medblip_dicom.api import caption_dicom

    result = caption_dicom(td("CT_small.dcm"), model=family_model("gemma3"), device="cpu", dtype="float32",
                           prompt="Name the modality.")
    assert CaptionReport.from_dataset(result.sr).prompt == "Name the modality."
