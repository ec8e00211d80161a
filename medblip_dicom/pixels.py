"""From a DICOM dataset to the 8-bit RGB picture the model sees: one pure function.

:func:`dataset_to_image` is the only place where DICOM pixel values become an image. Inference
(:mod:`medblip_dicom.api`) and training (``medblip_dicom.training``) both call it, so a model is
served exactly the pictures it was trained on. The steps, in the order of the DICOM grayscale
pipeline (PS3.4 N.2):

1. **Decode one frame** with pydicom's pixel plug-ins (YBR colour spaces come out as RGB).
2. **Modality LUT**: Modality LUT Sequence or Rescale Slope/Intercept
   (:func:`pydicom.pixels.apply_modality_lut`), taken per frame from the Pixel Value
   Transformation Sequence of enhanced multi-frame objects when present.
3. **VOI**: the VOI LUT Sequence if present, else the *first* Window Center/Width pair with its
   VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID) via pydicom's ``apply_voi`` /
   ``apply_windowing`` (per frame from the Frame VOI LUT Sequence where present).
   **Fallback** when the instance has no usable window: a linear window from the 0.5th to the
   99.5th percentile of the frame's modality values, so that a few hot or dead pixels do not
   flatten the picture.
4. **MONOCHROME1** is inverted after VOI, so that bone is bright as in every viewer.
5. **Colour**: RGB passes through (scaled to 8 bits), YBR_* is converted to RGB by the decoder,
   PALETTE COLOR goes through its palette (:func:`pydicom.pixels.apply_color_lut`).

**Frame choice** for multi-frame data: by default the middle frame (index ``n // 2``), which for
a CT/MR volume is the central slice and for a cine loop the mid-point; an explicit 0-based
``frame`` index picks another. Single-frame data always use frame 0.

The dataset is never modified: pydicom's windowing functions are given a small derived dataset
holding only the attributes they read.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, pixel_array

from medblip_dicom.dicomfile import number_of_frames
from medblip_dicom.errors import DicomReadError, PixelDecodeError

logger = logging.getLogger(__name__)

#: Percentiles of the fallback window used when an instance carries no VOI information.
FALLBACK_PERCENTILES = (0.5, 99.5)

_MODALITY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence")
_VOI_KEYWORDS = ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")


def choose_frame(ds: Dataset, frame: int | None = None, *, label: str = "dataset") -> int:
    """Return the 0-based frame index to caption: `frame` if given, else the middle frame."""
    count = number_of_frames(ds)
    if frame is None:
        return count // 2
    if not -count <= frame < count:
        raise DicomReadError(
            label, f"frame index {frame} is out of range: NumberOfFrames is {count} (valid 0..{count - 1})"
        )
    return frame % count


def dataset_to_array(ds: Dataset, frame: int | None = None, *, label: str | None = None) -> np.ndarray:
    """Return frame `frame` of `ds` as the model's input picture: ``uint8`` array ``(rows, cols, 3)``.

    See the module docstring for the steps, the fallback window and the default frame choice.
    Raises :class:`~medblip_dicom.errors.PixelDecodeError` naming the source and the transfer
    syntax when the pixels cannot be decoded.
    """
    label = label or str(getattr(ds, "filename", None) or "dataset")
    index = choose_frame(ds, frame, label=label)
    arr = _decode_frame(ds, index, label)
    photometric = str(ds.PhotometricInterpretation).strip()
    try:
        if photometric == "PALETTE COLOR":
            rgb = _palette_to_rgb(arr, ds)
        elif arr.ndim == 3:
            rgb = _colour_to_rgb8(arr, ds)
        elif arr.ndim == 2:
            gray = _grayscale_to_uint8(arr, ds, index, label)
            rgb = np.repeat(gray[:, :, None], 3, axis=2)
        else:
            raise PixelDecodeError(label, f"unexpected decoded frame shape {arr.shape}")
    except PixelDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - LUT/palette errors from corrupt attributes
        raise PixelDecodeError(
            label, f"cannot turn the {photometric} pixels into an image ({type(exc).__name__}: {exc})"
        ) from None
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def dataset_to_image(ds: Dataset, frame: int | None = None, *, label: str | None = None) -> Image.Image:
    """Return frame `frame` of `ds` as an 8-bit RGB :class:`PIL.Image.Image` (see :func:`dataset_to_array`)."""
    return Image.fromarray(dataset_to_array(ds, frame, label=label), mode="RGB")


def open_image(path: str | Path, frame: int | None = None) -> Image.Image:
    """Open a training or inference picture: a DICOM file through :func:`dataset_to_image`, any
    other image format (JPEG, PNG, ...) with Pillow, converted to 8-bit RGB.

    Training uses this, so ROCO's JPEGs and a user's DICOM files reach the processor the same way.
    """
    from medblip_dicom.reading import read_image  # local: keeps import light for image-only users

    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
        found = read_image(path)
        return dataset_to_image(found.dataset, frame, label=found.label)
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_rgb(img)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise PixelDecodeError(str(path), f"cannot open image ({type(exc).__name__}: {exc})") from None


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.repeat(_linear_to_uint8(arr, *_percentile_window(arr))[:, :, None], 3, axis=2))
    return img.convert("RGB")


def _decode_frame(ds: Dataset, index: int, label: str) -> np.ndarray:
    try:
        return pixel_array(ds, index=index)
    except Exception as exc:  # noqa: BLE001 - decoders raise many exception types
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        hint = ""
        if "plugin" in str(exc).lower() or "decoder" in str(exc).lower():
            hint = "; install a decoder plug-in for it (see `pydicom.pixels.get_decoder`)"
        raise PixelDecodeError(
            label, f"cannot decode pixel data in {name} ({type(exc).__name__}: {exc}){hint}"
        ) from None


def _functional_group_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """Return the item of `sequence` for frame `index`: per-frame group first, then shared group."""
    for groups_keyword, position in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_keyword)
        if groups and len(groups) > position:
            seq = groups[position].get(sequence)
            if seq:
                return seq[0]
    return None


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """A new dataset holding only what the LUT functions read, for frame `index`.

    Enhanced multi-frame objects keep rescale and window per frame in functional groups; classic
    objects keep them at the top level. The original dataset is not touched.
    """
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    for keyword in ("PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        if keyword in ds:
            view[keyword] = ds[keyword]
    if "BitsStored" not in view:
        view.BitsStored = int(ds.BitsAllocated)
    if "PixelRepresentation" not in view:
        view.PixelRepresentation = 0

    transform = _functional_group_item(ds, index, "PixelValueTransformationSequence")
    source = transform if transform is not None else ds
    for keyword in _MODALITY_KEYWORDS:
        if keyword in source:
            view[keyword] = source[keyword]
    if transform is not None and "ModalityLUTSequence" not in view and "ModalityLUTSequence" in ds:
        view["ModalityLUTSequence"] = ds["ModalityLUTSequence"]

    seq = view.get("ModalityLUTSequence")
    if seq and int(seq[0].LUTDescriptor[2]) not in (8, 16):
        # Entries are stored in 16-bit words whatever the nominal depth (e.g. 12), but pydicom
        # only knows uint8/uint16 tables: give it a copy that says 16.
        item = copy.deepcopy(seq[0])
        item.LUTDescriptor = [int(seq[0].LUTDescriptor[0]), int(seq[0].LUTDescriptor[1]), 16]
        view.ModalityLUTSequence = [item]

    voi = _functional_group_item(ds, index, "FrameVOILUTSequence")
    source = voi if voi is not None else ds
    for keyword in _VOI_KEYWORDS:
        if keyword in source:
            view[keyword] = source[keyword]
    if voi is not None and "VOILUTSequence" not in view and "VOILUTSequence" in ds:
        view["VOILUTSequence"] = ds["VOILUTSequence"]
    return view


def _grayscale_to_uint8(arr: np.ndarray, ds: Dataset, index: int, label: str) -> np.ndarray:
    """Modality LUT -> VOI -> 8 bits -> MONOCHROME1 inversion for one grayscale frame.

    Every step maps each stored value on its own (only the fallback window looks at the whole
    frame, through its histogram), so integer frames are mapped through a table: the steps run on
    each distinct stored value between the frame's minimum and maximum once, then one gather
    builds the picture. The result is identical to running the steps on every pixel (tested) and
    costs a fraction for large radiographs.
    """
    view = _frame_view(ds, index)
    if arr.dtype.kind in "iu" and arr.itemsize <= 2 and arr.size > 1024:
        lo, hi = int(arr.min()), int(arr.max())
        domain = np.arange(lo, hi + 1).astype(arr.dtype)
        positions = arr.astype(np.int32) - lo
        counts = np.bincount(positions.ravel(), minlength=domain.size)
        out = _map_values(domain, view, label, counts)[positions]
    else:
        out = _map_values(arr, view, label, None)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        out = 255 - out
    return out


def _map_values(arr: np.ndarray, view: Dataset, label: str, weights: np.ndarray | None) -> np.ndarray:
    """Modality LUT then VOI (or the fallback window) to uint8, elementwise over `arr`.

    `weights` counts how often each entry of `arr` occurs in the frame (table mode), for the
    percentiles of the fallback window; None means `arr` is the frame itself.
    """
    values = apply_modality_lut(arr, view)
    out: np.ndarray | None = None
    if view.get("VOILUTSequence"):
        lut_input = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        mapped = apply_voi(lut_input, view, index=0).astype(np.float64)
        entries = _lut_entries(view.VOILUTSequence[0], view)
        out = _linear_to_uint8(mapped, float(entries.min()), float(entries.max()))
    elif "WindowCenter" in view and "WindowWidth" in view:
        out = _window(values, view, label)
    if out is None:
        out = _linear_to_uint8(values.astype(np.float64), *_percentile_window(values, weights))
        logger.debug("%s: no usable VOI, using the %s percentile window", label, FALLBACK_PERCENTILES)
    return out


def _window(values: np.ndarray, view: Dataset, label: str) -> np.ndarray | None:
    """Apply the first Window Center/Width with pydicom; None when the window is unusable."""
    window = Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"
    # An unsigned 8-bit output range makes apply_windowing map straight to 0..255.
    window.BitsStored = 8
    window.PixelRepresentation = 0
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in view and view[keyword].value not in (None, ""):
            window[keyword] = view[keyword]
    if "WindowCenter" not in window or "WindowWidth" not in window:
        return None
    try:
        mapped = apply_windowing(values, window, index=0)
    except (ValueError, TypeError, IndexError) as exc:
        logger.warning("%s: ignoring unusable window (%s); using the fallback window", label, exc)
        return None
    return np.clip(np.rint(mapped), 0, 255).astype(np.uint8)


def _lut_entries(item: Dataset, view: Dataset) -> np.ndarray:
    """The entries of a VOI LUT item as integers (LUT Data may be US or OW)."""
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        little = True
        meta = getattr(view, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            little = meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
        return np.frombuffer(data, dtype="<u2" if little else ">u2")
    return np.asarray(data if isinstance(data, (list, tuple)) else [data], dtype=np.int64)


def _percentile_window(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """The fallback window: FALLBACK_PERCENTILES of the frame's values (numpy's linear method).

    With `weights` (value counts), the percentiles of the frame are found from its histogram:
    the same numbers ``np.percentile`` gives on the full frame.
    """
    if weights is None:
        low, high = np.percentile(values, FALLBACK_PERCENTILES)
        return float(low), float(high)
    order = np.argsort(values, kind="stable")
    sorted_values = np.asarray(values, dtype=np.float64)[order]
    cumulative = np.cumsum(weights[order])
    total = int(cumulative[-1])

    def kth(k: int) -> float:  # the k-th smallest pixel value (0-based)
        return float(sorted_values[np.searchsorted(cumulative, k, side="right")])

    result = []
    for p in FALLBACK_PERCENTILES:
        position = p / 100 * (total - 1)
        k0 = int(np.floor(position))
        k1 = min(k0 + 1, total - 1)
        result.append(kth(k0) + (position - k0) * (kth(k1) - kth(k0)))
    return result[0], result[1]


def _linear_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        high = low + 1.0
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _colour_to_rgb8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if arr.shape[-1] != 3:
        raise PixelDecodeError(str(getattr(ds, "filename", "dataset")), f"{arr.shape[-1]} samples per pixel is not supported")
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    return _linear_to_uint8(arr, 0.0, float(2**bits - 1))


def _palette_to_rgb(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    rgb = apply_color_lut(arr, ds)
    if rgb.dtype == np.uint8:
        return rgb
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    bits = int(descriptor[2]) if descriptor else 16
    return _linear_to_uint8(rgb, 0.0, float(2**bits - 1))
