"""The one pixel function, checked against values computed here from the standard's formulas."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array

from medblip_dicom.errors import DicomReadError
from medblip_dicom.pixels import FALLBACK_PERCENTILES, choose_frame, dataset_to_array, dataset_to_image


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window onto 0..255, written out independently of pydicom."""
    c, w = center - 0.5, width - 1
    y = ((x - c) / w + 0.5) * 255
    y = np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, y))
    return np.rint(y)


class TestGrayscale:
    def test_ct_rescale_then_percentile_fallback(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        assert "WindowCenter" not in ds  # this file has no window: the documented fallback applies
        hu = pixel_array(ds).astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        low, high = np.percentile(hu, FALLBACK_PERCENTILES)
        expected = np.clip(np.rint((hu - low) * 255 / (high - low)), 0, 255)
        out = dataset_to_array(ds)
        assert out.shape == (128, 128, 3) and out.dtype == np.uint8
        assert np.array_equal(out[..., 0], out[..., 2])
        assert np.abs(out[..., 0].astype(int) - expected).max() <= 1

    def test_ct_window_applied_in_hounsfield_units(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        ds.WindowCenter, ds.WindowWidth = 40, 400  # soft-tissue window, in HU
        hu = pixel_array(ds).astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out = dataset_to_array(ds)[..., 0].astype(int)
        assert np.abs(out - linear_window(hu, 40, 400)).max() <= 1
        assert out[hu < -200].max() == 0  # air and fat below the window are black
        assert out[hu > 300].min() == 255  # bone above the window is white

    def test_mr_window(self, td):
        ds = pydicom.dcmread(td("MR_small.dcm"))
        raw = pixel_array(ds).astype(np.float64)
        out = dataset_to_array(ds)[..., 1].astype(int)
        assert np.abs(out - linear_window(raw, float(ds.WindowCenter), float(ds.WindowWidth))).max() <= 1

    def test_sigmoid_and_linear_exact(self, td):
        ds = pydicom.dcmread(td("MR_small.dcm"))
        raw = pixel_array(ds).astype(np.float64)
        c, w = 600.0, 800.0
        ds.WindowCenter, ds.WindowWidth = c, w
        ds.VOILUTFunction = "SIGMOID"
        sig = dataset_to_array(ds)[..., 0].astype(int)
        assert np.abs(sig - np.rint(255 / (1 + np.exp(-4 * (raw - c) / w)))).max() <= 1
        ds.VOILUTFunction = "LINEAR_EXACT"
        exact = dataset_to_array(ds)[..., 0].astype(int)
        expected = np.clip(np.rint(((raw - c) / w + 0.5) * 255), 0, 255)
        assert np.abs(exact - expected).max() <= 1

    def test_voi_lut_sequence_wins_over_window(self, td):
        ds = pydicom.dcmread(td("MR_small.dcm"))
        raw = pixel_array(ds).astype(np.float64)
        item = pydicom.Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.LUTData = [4095 - v for v in range(4096)]  # an inverting LUT
        ds.VOILUTSequence = [item]
        out = dataset_to_array(ds)[..., 0].astype(int)
        expected = np.rint((4095 - np.clip(raw, 0, 4095)) * 255 / 4095)
        assert np.abs(out - expected).max() <= 1

    def test_monochrome1_chest_bone_is_bright(self, td):
        ds = pydicom.dcmread(td("RG1_UNCI.dcm"))
        assert ds.PhotometricInterpretation == "MONOCHROME1"
        raw = pixel_array(ds).astype(np.float64)
        out = dataset_to_array(ds)[..., 0].astype(int)
        # MONOCHROME1: low stored values are displayed white. After VOI and inversion, the
        # output must fall as the stored value rises, and the spine (centre column, dense
        # bone) must be brighter than the lungs on either side of it.
        expected = 255 - linear_window(raw, float(ds.WindowCenter), float(ds.WindowWidth))
        assert np.abs(out - expected).max() <= 1
        rows, cols = out.shape
        band = slice(rows // 3, 2 * rows // 3)
        spine = out[band, cols // 2 - cols // 40: cols // 2 + cols // 40].mean()
        lungs = np.concatenate([out[band, cols // 5: cols // 3].ravel(), out[band, 2 * cols // 3: 4 * cols // 5].ravel()]).mean()
        assert spine > lungs + 20, (spine, lungs)

    def test_monochrome1_jpeg2000_matches_uncompressed(self, td):
        lossless = dataset_to_array(pydicom.dcmread(td("RG1_J2KR.dcm")))
        raw = dataset_to_array(pydicom.dcmread(td("RG1_UNCR.dcm")))
        assert np.array_equal(lossless, raw)

    def test_dataset_is_not_modified(self, td):
        ds = pydicom.dcmread(td("CT_small.dcm"))
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        before = ds.to_json_dict()
        dataset_to_array(ds)
        assert ds.to_json_dict() == before

    def test_unusable_window_falls_back(self, td):
        ds = pydicom.dcmread(td("MR_small.dcm"))
        ds.WindowWidth = 0  # invalid for LINEAR
        out = dataset_to_array(ds)
        assert out.min() == 0 and out.max() == 255


class TestEnhancedMultiFrame:
    def test_per_frame_rescale_and_window_from_functional_groups(self, td):
        ds = pydicom.dcmread(td("emri_small.dcm"))
        raw = pixel_array(ds, index=3).astype(np.float64)
        # This test file carries no functional groups; give it the enhanced-MR structure.
        ds.PerFrameFunctionalGroupsSequence = [pydicom.Dataset() for _ in range(int(ds.NumberOfFrames))]
        ds.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
        pvt = pydicom.Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 2, -100, "US"
        voi = pydicom.Dataset()
        voi.WindowCenter, voi.WindowWidth = 500, 600
        ds.PerFrameFunctionalGroupsSequence[3].PixelValueTransformationSequence = [pvt]
        ds.PerFrameFunctionalGroupsSequence[3].FrameVOILUTSequence = [voi]
        out = dataset_to_array(ds, 3)[..., 0].astype(int)
        assert np.abs(out - linear_window(raw * 2 - 100, 500, 600)).max() <= 1
        # frame 2 has no window of its own: the fallback applies there
        other = dataset_to_array(ds, 2)[..., 0]
        assert other.min() == 0 and other.max() == 255


class TestColour:
    def test_palette_colour_goes_through_its_lut(self, td):
        ds = pydicom.dcmread(td("OBXXXX1A.dcm"))
        idx = pixel_array(ds)
        out = dataset_to_array(ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        red = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype="<u2").astype(np.float64)
        first = int(ds.RedPaletteColorLookupTableDescriptor[1])
        expected = np.rint(red[np.clip(idx.astype(int) - first, 0, len(red) - 1)] * 255 / (2**bits - 1))
        assert np.abs(out[..., 0].astype(int) - expected).max() <= 1

    def test_ybr_ultrasound_multiframe_middle_frame_default(self, td):
        ds = pydicom.dcmread(td("color3d_jpeg_baseline.dcm"))
        assert int(ds.NumberOfFrames) == 120 and ds.PhotometricInterpretation == "YBR_FULL_422"
        assert choose_frame(ds) == 60
        middle = dataset_to_array(ds)
        assert np.array_equal(middle, pixel_array(ds, index=60))  # decoder converts YBR to RGB
        assert not np.array_equal(middle, dataset_to_array(ds, 0))

    def test_rgb_ultrasound(self, td):
        ds = pydicom.dcmread(td("US1_UNCR.dcm"))
        out = dataset_to_array(ds)
        assert np.array_equal(out, pixel_array(ds))
        assert (out[..., 0] != out[..., 2]).any()  # really in colour

    def test_16_bit_rgb_scaled_to_8_bits(self, td):
        ds = pydicom.dcmread(td("SC_rgb_16bit_2frame.dcm"))
        raw = pixel_array(ds, index=1).astype(np.float64)
        out = dataset_to_array(ds, 1)
        assert np.abs(out.astype(int) - np.rint(raw * 255 / 65535)).max() <= 1

    def test_image_helper_returns_rgb(self, td):
        img = dataset_to_image(pydicom.dcmread(td("MR_small.dcm")))
        assert img.mode == "RGB" and img.size == (64, 64)


class TestFrameChoice:
    def test_explicit_and_negative_index(self, td):
        ds = pydicom.dcmread(td("emri_small.dcm"))
        assert choose_frame(ds) == 5
        assert choose_frame(ds, 0) == 0
        assert choose_frame(ds, -1) == 9

    def test_out_of_range_names_number_of_frames(self, td):
        ds = pydicom.dcmread(td("emri_small.dcm"))
        with pytest.raises(DicomReadError, match="NumberOfFrames is 10"):
            dataset_to_array(ds, 10)

    def test_single_frame_is_frame_zero(self, td):
        assert choose_frame(pydicom.dcmread(td("CT_small.dcm"))) == 0


def _add_modality_lut(ds):
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.ModalityLUTType = "HU"
    item.LUTData = [min(4095, (v * 7) % 5000) for v in range(4096)]  # deliberately not monotone
    ds.ModalityLUTSequence = [item]
    del ds.RescaleSlope, ds.RescaleIntercept


def _add_voi_lut(ds):
    item = pydicom.Dataset()
    item.LUTDescriptor = [2048, 0, 16]
    item.LUTData = [(v * 13) % 65536 for v in range(2048)]
    ds.VOILUTSequence = [item]


class TestTableMapping:
    """Large integer frames go through a per-value table; it must equal per-pixel mapping exactly."""

    @pytest.mark.parametrize("name, tweak", [
        ("CT_small.dcm", None),  # rescale + percentile fallback
        ("CT_small.dcm", lambda ds: setattr(ds, "WindowCenter", 40) or setattr(ds, "WindowWidth", 400)),
        ("CT_small.dcm", _add_modality_lut),  # non-monotone modality LUT + fallback percentiles
        ("RG1_UNCI.dcm", None),  # MONOCHROME1 with a window
        ("MR_small.dcm", _add_voi_lut),
        ("MR_small.dcm", lambda ds: setattr(ds, "VOILUTFunction", "SIGMOID")),
        ("US1_UNCR.dcm", None),  # colour: not table-mapped, still equal to itself
    ])
    def test_table_equals_per_pixel(self, td, name, tweak):
        from medblip_dicom.pixels import _frame_view, _map_values

        ds = pydicom.dcmread(td(name))
        if tweak:
            tweak(ds)
        out = dataset_to_array(ds)
        arr = pixel_array(ds)
        if arr.ndim == 3:
            assert np.array_equal(out, arr)
            return
        direct = _map_values(arr, _frame_view(ds, 0), name, None)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            direct = 255 - direct
        assert np.array_equal(out[..., 0], direct)
        assert len(np.unique(out)) > 8  # a real picture, not a flat frame
