"""The batch job's stages with a vision-language model: prompted inputs cross the process boundary
as arrays, the actor captions them in one batch, and the SRs are those ``caption_dicom`` writes.

The stages are called as Ray calls them (a pandas batch in, a pandas batch out), without Ray: what
is tested here is the data a stage hands the next, not the scheduling (``test_batch.py``).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medblip_dicom import caption_dicom
from medblip_dicom.captioner import Captioner
from medblip_dicom.errors import ModelLoadError
from medblip_dicom.generation import GenerationSettings

pytest.importorskip("pandas")

GENERATION = {"num_beams": 1, "max_new_tokens": 6, "min_new_tokens": 2}


def test_prompted_inputs_go_through_the_stages_and_give_the_library_s_reports(family_model, td, tmp_path):
    from medblip_dicom.integrations.batch import stages

    model = str(family_model("idefics3"))
    paths = [td("CT_small.dcm"), td("MR_small.dcm"), td("RG1_UNCI.dcm")]
    batch = pd.DataFrame({"index": range(len(paths)), "path": paths, "note": [""] * len(paths)})
    prepared = stages.prepare_batch(batch, model=model, frame=None, prompt="Which organ?")
    assert set(prepared["shape"]) == {"npz"} and not any(prepared["error"])
    actor = stages.CaptionActor(model, device="cpu", dtype="float32", threads=torch.get_num_threads(),
                                generation=GENERATION, prompt="Which organ?")
    captioned = actor(prepared)
    written = stages.write_batch(captioned, output_dir=str(tmp_path / "batch"))
    assert list(written["status"]) == ["captioned"] * 3

    captioner = Captioner.load(model, device="cpu", dtype="float32", prompt="Which organ?",
                               settings=GenerationSettings(**GENERATION))
    for path, uid, caption in zip(paths, written["sr_sop_instance_uid"], written["caption"]):
        alone = caption_dicom(path, model=captioner, output_dir=tmp_path / "library")
        assert (alone.sr_sop_instance_uid, alone.caption) == (uid, caption)


def test_inputs_round_trip_as_arrays_only(family_model):
    from medblip_dicom.integrations.batch.stages import decode_inputs, encode_inputs
    from medblip_dicom.modelinputs import as_numpy

    from PIL import Image

    captioner = Captioner.load(family_model("paligemma"), device="cpu", dtype="float32")
    inputs = captioner.preprocess([Image.new("RGB", (40, 30), 100)])
    data, layout = encode_inputs(as_numpy(inputs))
    back = decode_inputs(data, layout)
    assert back.keys() == inputs.keys() and all(torch.equal(back[k], inputs[k]) for k in inputs)


def test_a_prompt_for_a_model_that_takes_none_stops_the_job_before_it_starts(tiny_model_dir):
    from medblip_dicom.integrations.batch.stages import model_inputs

    with pytest.raises(ModelLoadError, match="without a prompt"):
        model_inputs(str(tiny_model_dir), "Describe it.")
