"""Fixtures for training tests: the synthetic data set in both layouts, small models."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The learnable synthetic data set in the original ROCO layout (data/...)."""
    from medblip_dicom.training.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthetic-roco"), layout="roco")


@pytest.fixture(scope="session")
def kaggle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic data set in the Kaggle layout (all_data/...)."""
    from medblip_dicom.training.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthetic-kaggle"), layout="kaggle",
                         sizes={"train": 24, "validation": 8, "test": 8})


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 'small' BLIP (64 px) to train from scratch."""
    from medblip_dicom.training.demo_model import build_blip_model

    return build_blip_model(tmp_path_factory.mktemp("models") / "small-blip", size="small", seed=0)
