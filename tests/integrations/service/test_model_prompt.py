"""The services ask a vision-language model what ``[model] prompt`` (or ``--prompt``) says, and their
reports record it: ``medblip watch --once`` with a configured prompt, then with a flag over it."""

from __future__ import annotations

import shutil

import pytest

from medblip_dicom.apps.main import main
from medblip_dicom.integrations.config.file import ConfigError, config_from_dict
from medblip_dicom.report_view import CaptionReport

from tests.support.services import write_toml


def _watch(tmp_path, td, config, name: str, *extra: str) -> CaptionReport:
    inbox, out = tmp_path / f"inbox-{name}", tmp_path / f"out-{name}"
    inbox.mkdir()
    shutil.copy(td("CT_small.dcm"), inbox / "ct.dcm")
    rc = main(["watch", str(inbox), "--config", str(config), "--out", str(out),
               "--spool", str(tmp_path / f"spool-{name}"), "--once", "-q", *extra])
    assert rc == 0
    (sr,) = out.glob("*.dcm")
    return CaptionReport.from_file(sr)


def test_watch_asks_the_configured_prompt_and_a_flag_wins(family_model, td, tmp_path):
    config = write_toml(tmp_path / "medblip.toml", {"model": {
        "path": str(family_model("idefics3")), "prompt": "Which organ is shown?", "device": "cpu", "dtype": "float32",
        "num_beams": 1, "max_new_tokens": 6, "min_new_tokens": 2}})
    configured = _watch(tmp_path, td, config, "configured")
    assert configured.prompt == "Which organ is shown?"
    assert configured.architecture == "Idefics3ForConditionalGeneration"
    flagged = _watch(tmp_path, td, config, "flag", "--prompt", "Name the modality.")
    assert flagged.prompt == "Name the modality."
    assert flagged.sop_instance_uid != configured.sop_instance_uid


def test_a_prompt_that_is_not_text_is_a_configuration_error():
    with pytest.raises(ConfigError, match=r"\[model\] prompt"):
        config_from_dict({"model": {"prompt": 3}})
