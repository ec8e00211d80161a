"""The reviewer's image: the one pixel path, the file's own window or a CT preset, the source untouched."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from medblip_dicom.integrations.review.render import CT_PRESETS, presets_for, render_png
from medblip_dicom.pixels import dataset_to_array


def test_the_file_window_is_what_the_model_saw_and_presets_change_it(td):
    path = td("CT_small.dcm")
    before = pydicom.dcmread(path)
    shown = np.asarray(Image.open(io.BytesIO(render_png(path))).convert("RGB"))
    assert np.array_equal(shown, dataset_to_array(pydicom.dcmread(path)))
    lung = np.asarray(Image.open(io.BytesIO(render_png(path, "lung"))).convert("RGB"))
    bone = np.asarray(Image.open(io.BytesIO(render_png(path, "bone"))).convert("RGB"))
    assert lung.shape == shown.shape and not np.array_equal(lung, shown) and not np.array_equal(lung, bone)
    assert pydicom.dcmread(path) == before


def test_presets_are_offered_for_ct_only_and_unknown_windows_are_refused(td):
    assert presets_for("CT") == ["file", *CT_PRESETS] and presets_for("MR") == ["file"]
    with pytest.raises(ValueError, match="unknown window"):
        render_png(td("CT_small.dcm"), "../etc")
