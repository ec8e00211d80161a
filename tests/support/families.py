"""The other families' tiny models (GIT, PaliGemma, Idefics3/SmolVLM, Gemma 3), built once per session.

Built locally from configs and word-level vocabularies (:mod:`medblip_dicom.training.demo_families`);
nothing is downloaded. Tests take them through the ``family_model`` fixture: ``family_model("gemma3")``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

#: Every family the tests build, and the class each loads as.
ARCHITECTURES = {"git": "GitForCausalLM", "paligemma": "PaliGemmaForConditionalGeneration",
                 "idefics3": "Idefics3ForConditionalGeneration", "gemma3": "Gemma3ForConditionalGeneration"}
#: The decoder-only ones: given a prompt, batched with left padding.
PROMPTED = ("paligemma", "idefics3", "gemma3")


@pytest.fixture(scope="session")
def family_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``family_model(name, size="tiny")``: the model directory of that family, built on first use.

    Models are built inside tests, some of which capture stderr: transformers' log handler is made
    here first, on the session's stderr, not on a test's captured stream that closes with the test.
    """
    from transformers.utils import logging as hf_logging

    from medblip_dicom.training.demo_families import build_family_model

    hf_logging.get_logger("transformers")

    built: dict[tuple[str, str], Path] = {}

    def get(family: str, size: str = "tiny") -> Path:
        if (family, size) not in built:
            folder = tmp_path_factory.mktemp("family-models") / f"{size}-{family}"
            built[family, size] = build_family_model(folder, family, size=size, seed=0)
        return built[family, size]

    return get
