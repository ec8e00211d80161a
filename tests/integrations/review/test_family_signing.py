"""A signed report of a vision-language model's caption keeps who wrote the caption, asked what.

The signed SR names the same device (UID, name, architecture) and records the same prompt as the
AI report, and every reader traces it back to that AI report (whose UID derives from the weights
and the prompt).
"""

from __future__ import annotations

import pydicom

from medblip_dicom import caption_dicom
from medblip_dicom.captioner import Captioner
from medblip_dicom.generation import GenerationSettings
from medblip_dicom.integrations.review.signing import Reviewer, build_signed_report, source_header
from medblip_dicom.report_view import SIGNED, CaptionReport, read_document

from tests.support.dicom import validate_sr

ALICE = Reviewer("alice", "Doe^Alice", "Test Hospital")


def test_signing_keeps_the_architecture_and_the_prompt_and_the_way_back(family_model, td, tmp_path):
    captioner = Captioner.load(family_model("gemma3"), device="cpu", dtype="float32", prompt="Name the finding.",
                               settings=GenerationSettings(num_beams=1, max_new_tokens=6, min_new_tokens=2))
    result = caption_dicom(td("CT_small.dcm"), model=captioner, output_dir=tmp_path / "ai")
    ai = pydicom.dcmread(result.sr_path)
    signed = build_signed_report(ai, ai, source_header(ai), ALICE, "No acute finding.")
    path = tmp_path / "signed.dcm"
    signed.save_as(path, enforce_file_format=True)
    validate_sr(path)

    before, after = CaptionReport.from_dataset(ai), CaptionReport.from_file(path)
    assert (after.architecture, after.prompt) == ("Gemma3ForConditionalGeneration", "Name the finding.")
    assert (after.device_uid, after.model_name, after.model_version, after.weights_sha256) == (
        before.device_uid, before.model_name, before.model_version, before.weights_sha256)
    document = read_document(pydicom.dcmread(path))
    assert document.kind == SIGNED and document.first_uid == str(ai.SOPInstanceUID)
