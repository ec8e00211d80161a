"""Read a DICOM source (path, bytes or pydicom ``Dataset``) and check that it is an image.

This is the first step of the one data flow (see docs/data-flow.md): it turns
whatever the caller has into a :class:`pydicom.Dataset` plus a human-readable *label* used in
every error message and log line, and it refuses, with a :class:`~medblip_dicom.errors.DicomReadError`
that names the file and the reason, everything that cannot become a caption: non-DICOM files,
truncated files, DICOMDIRs, instances without Pixel Data (SR, RT Plan, encapsulated PDF, ...),
pixel-bearing objects that are not pictures (segmentations, RT dose grids) and frames so large
that decoding them would exhaust memory.

The caller's dataset is never modified; where a transfer syntax has to be filled in, a shallow copy
is returned instead.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, Union

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError as _PydicomInvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR as _VR

from medblip_dicom.dicomfile import (
    MAX_FRAME_BYTES, MAX_INFLATED_BYTES, BoundedReader, deflate_bomb_at, number_of_frames,
)
from medblip_dicom.errors import (
    DicomReadError,
    InvalidDicomError,
    NotAnImageError,
    NotDicomError,
)

logger = logging.getLogger(__name__)

#: Anything :func:`read_image` accepts.
DicomSource = Union[str, "os.PathLike[str]", bytes, bytearray, Dataset]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: Storage SOP classes that carry Pixel Data but are not pictures a caption model should see.
NON_IMAGE_PIXEL_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation (label masks)",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose grid",
    "1.2.840.10008.5.1.4.1.1.30": "a Parametric Map",
}

#: Attributes without which no caption or SR can be produced, with why they are needed.
REQUIRED_ATTRIBUTES = {
    "SOPClassUID": "the SR must reference the source instance",
    "SOPInstanceUID": "the SR must reference the source instance",
    "StudyInstanceUID": "the SR belongs to the source's study",
    "SeriesInstanceUID": "the SR must reference the source's series",
    "Rows": "needed to decode the pixels",
    "Columns": "needed to decode the pixels",
    "BitsAllocated": "needed to decode the pixels",
    "PhotometricInterpretation": "needed to turn the pixels into an image",
}


@dataclass(frozen=True)
class ReadImage:
    """A dataset that passed every check of :func:`read_image`, with the label used in messages."""

    dataset: Dataset
    label: str


def describe(source: DicomSource) -> str:
    """Return the label used for `source` in messages: its path, or a short description."""
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)
        if isinstance(filename, str) and filename:
            return filename
        return f"<dataset {source.get('SOPInstanceUID', 'without SOPInstanceUID')}>"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def read_dataset(source: DicomSource) -> tuple[Dataset, str]:
    """Parse `source` into a dataset without checking that it is an image.

    Raises :class:`NotDicomError` for files that are not DICOM and :class:`InvalidDicomError` for
    DICOM files that cannot be parsed (truncated, corrupt).
    """
    label = describe(source)
    if isinstance(source, Dataset):
        return _with_transfer_syntax(source, label, owned=False), label
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise NotDicomError(label, "empty input (0 bytes), not a DICOM file")
        return _parse(lambda: io.BytesIO(source), label), label

    path = Path(source)
    if not path.exists():
        raise DicomReadError(label, "no such file")
    if path.is_dir():
        raise DicomReadError(label, "is a folder, not a file")
    if path.stat().st_size == 0:
        raise NotDicomError(label, "empty file (0 bytes), not a DICOM file")
    return _parse(lambda: BoundedReader(path), label), label


_KNOWN_VRS = frozenset(vr.value for vr in _VR)
_UNDEFINED_LENGTH = 0xFFFFFFFF


def check_parsable(ds: Dataset) -> None:
    """Raise ValueError when `ds` holds an element pydicom cannot decode.

    Checks what decoding can trip over without converting every value (converting costs ~10 us
    an element, most of a C-STORE's handling time): each element's VR is a known one, and every
    sequence, at any depth, parses into items. Values are still converted lazily when read; one
    that breaks its VR is reported by whoever reads it (the worker fails its job with a reason).
    """
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if elem is None:
            continue
        vr = elem.VR
        if vr is not None and vr not in _KNOWN_VRS:
            raise ValueError(f"unknown VR {vr!r} in tag {tag}")
        undefined = (getattr(elem, "length", 0) == _UNDEFINED_LENGTH
                     or getattr(elem, "is_undefined_length", False))
        is_sequence = vr == "SQ" or (vr is None and (undefined or _dictionary_vr(tag) == "SQ"))
        if is_sequence:
            for item in ds[tag].value:  # parses the items (raises on a broken one)
                check_parsable(item)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def read_header(source: DicomSource | BinaryIO, tags: Sequence[str] | None = None) -> Dataset | None:
    """The data set without its pixel data (only `tags`, when given), for deciding what to do with
    an instance before decoding it; None when the source cannot be parsed at all (the reader says
    why later) or is a deflated data set that would inflate beyond :data:`MAX_INFLATED_BYTES`.

    Reads as little as it can: stops before Pixel Data, defers large values, and measures a
    deflated data set streaming before pydicom would inflate it whole.
    """
    if isinstance(source, Dataset):
        return source
    try:
        if isinstance(source, (bytes, bytearray)):
            opened: Any = contextlib.nullcontext(io.BytesIO(source))
        elif hasattr(source, "read"):
            opened = contextlib.nullcontext(source)
        else:
            opened = BoundedReader(source)
        with opened as fh:
            if deflate_bomb_at(fh):
                return None
            return pydicom.dcmread(fh, stop_before_pixels=True, force=True, defer_size=4096,
                                   specific_tags=list(tags) if tags else None)
    except Exception:  # noqa: BLE001 - any parse failure: whoever reads it in full reports the reason
        return None


def _refuse_inflation_bomb(fh: BinaryIO, label: str) -> None:
    if deflate_bomb_at(fh):
        raise InvalidDicomError(
            label, f"its deflated data set inflates to more than {MAX_INFLATED_BYTES // 2**20} MiB; "
            "refusing to inflate it (a decompression bomb?)"
        )


def _parse(opener: Callable[[], BinaryIO], label: str) -> Dataset:
    """Parse the file `opener` opens (each call a fresh one, closed here), refusing with a reason."""
    try:
        with opener() as fh:
            _refuse_inflation_bomb(fh, label)
    except OSError as exc:
        raise DicomReadError(label, f"cannot be read ({exc.strerror or exc})") from None
    try:
        with opener() as fh:
            ds = pydicom.dcmread(fh)
    except _PydicomInvalidDicomError:
        # No 'DICM' prefix: older files start directly with a data set. Accept them only if
        # a forced read finds the identifying attributes of a real instance.
        try:
            with opener() as fh:
                ds = pydicom.dcmread(fh, force=True)
            ok = "SOPClassUID" in ds and "SOPInstanceUID" in ds
        except Exception:  # noqa: BLE001 - any parse failure means "not DICOM" here
            ok = False
        if not ok:
            raise NotDicomError(
                label, "not a DICOM file (no 'DICM' prefix and no DICOM data elements found)"
            ) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure (pydicom also raises RuntimeError subclasses
        # such as BytesLengthException for values cut short) means a corrupt or truncated file
        raise InvalidDicomError(
            label, f"corrupt or truncated DICOM file ({type(exc).__name__}: {exc})"
        ) from None
    try:
        for part in (getattr(ds, "file_meta", None), ds):  # an unknown VR or a broken sequence, named here
            if part is not None:                              # rather than wherever it is read
                check_parsable(part)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken sequences
        raise InvalidDicomError(label, f"corrupt data element ({exc})") from None
    return _with_transfer_syntax(ds, label, owned=True)


def _with_transfer_syntax(ds: Dataset, label: str, *, owned: bool) -> Dataset:
    """Make sure the dataset's file meta names its transfer syntax (pixel decoding needs it).

    A dataset read without a file meta header is encoded in the syntax pydicom detected while
    parsing (``original_encoding``); we record that. A caller's dataset is shallow-copied first.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        if "PixelData" not in ds:
            return ds
        raise InvalidDicomError(
            label,
            "missing (0002,0010) TransferSyntaxUID in the file meta, and the encoding is unknown; "
            "set ds.file_meta.TransferSyntaxUID",
        )
    if implicit:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    out = ds if owned else ds.copy()
    new_meta = copy.deepcopy(meta) if meta is not None else FileMetaDataset()
    new_meta.TransferSyntaxUID = syntax
    out.file_meta = new_meta
    logger.debug("%s: no transfer syntax in file meta, using %s", label, syntax.name)
    return out


def check_image(ds: Dataset, label: str) -> None:
    """Raise unless `ds` is an image instance that :mod:`medblip_dicom.pixels` can turn into a picture."""
    meta = getattr(ds, "file_meta", None)
    try:
        media_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
        sop_class = ds.get("SOPClassUID") or media_class
        has_pixels = "PixelData" in ds
    except Exception as exc:  # noqa: BLE001 - corrupt element values surface lazily
        raise InvalidDicomError(label, f"corrupt data element ({exc})") from None
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NotAnImageError(label, "is a DICOMDIR (media directory), not an image; caption the files it lists")
    if sop_class is not None and not isinstance(sop_class, str):  # several values (a backslash in the UID)
        raise InvalidDicomError(label, f"(0008,0016) SOPClassUID holds {len(sop_class)} UIDs; an instance has one")

    if not has_pixels:
        missing = [keyword for keyword in ("SOPClassUID", "SOPInstanceUID") if keyword not in ds]
        if missing:
            # Every DICOM instance names its SOP class and instance (type 1); a data set without
            # them and without pixel data is a corrupt or truncated file (e.g. a valid header
            # followed by garbage, or one cut short), not a valid non-image instance.
            raise InvalidDicomError(
                label, f"holds no Pixel Data (7FE0,0010) and no {' or '.join(missing)}: the file is corrupt or "
                "truncated"
            )
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise NotAnImageError(label, "holds floating-point pixel data (parametric map), which is not supported")
        kind = _sop_class_name(sop_class)
        if "Image Storage" in kind:
            raise InvalidDicomError(
                label, f"is {kind} but holds no Pixel Data (7FE0,0010); the file is truncated or was stripped"
            )
        raise NotAnImageError(label, f"holds no Pixel Data (7FE0,0010): {kind} is not an image")
    if sop_class in NON_IMAGE_PIXEL_CLASSES:
        raise NotAnImageError(
            label, f"is {NON_IMAGE_PIXEL_CLASSES[sop_class]} ({_sop_class_name(sop_class)}), not a picture to caption"
        )

    for keyword, why in REQUIRED_ATTRIBUTES.items():
        try:
            value = ds.get(keyword)
        except Exception as exc:  # noqa: BLE001
            raise InvalidDicomError(label, f"attribute {keyword} cannot be read ({exc})") from None
        if value is None or value == "":
            tag = pydicom.datadict.tag_for_keyword(keyword)
            raise InvalidDicomError(
                label, f"missing required attribute ({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}: {why}"
            )

    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword))
        if not UID(value).is_valid or value.split(".", 1)[0] not in ("0", "1", "2"):
            tag = pydicom.datadict.tag_for_keyword(keyword)
            raise InvalidDicomError(
                label,
                f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword} {value[:70]!r} is not a valid DICOM UID "
                "(digits and dots, at most 64 characters); a report cannot reference it",
            )

    rows, cols = _whole_number(ds, "Rows", label), _whole_number(ds, "Columns", label)
    samples = _whole_number(ds, "SamplesPerPixel", label, default=1) or 1
    bits = _whole_number(ds, "BitsAllocated", label)
    if rows <= 0 or cols <= 0:
        raise InvalidDicomError(label, f"Rows x Columns is {rows} x {cols}; the image is empty")
    frame_bytes = rows * cols * samples * max(bits, 8) // 8
    if frame_bytes > MAX_FRAME_BYTES:
        raise InvalidDicomError(
            label,
            f"one frame would need {frame_bytes / 2**20:.0f} MiB (Rows {rows} x Columns {cols} x "
            f"SamplesPerPixel {samples} x BitsAllocated {bits}); refusing to decode more than "
            f"{MAX_FRAME_BYTES // 2**20} MiB per frame",
        )
    if bits == 1:
        raise NotAnImageError(label, "has 1-bit pixel data (a mask or overlay), not a picture to caption")
    _check_native_length(ds, label, frame_bytes)


def _whole_number(ds: Dataset, keyword: str, label: str, default: int | None = None) -> int:
    """The value of a US/IS attribute as one integer; InvalidDicomError naming it when it is not one."""
    try:
        value = ds.get(keyword, default)
        return int(default if value is None or value == "" else value)
    except Exception:  # noqa: BLE001 - a corrupt value raises in pydicom's conversion or in int()
        tag = pydicom.datadict.tag_for_keyword(keyword)
        raise InvalidDicomError(
            label, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword} is not one whole number: the file is corrupt"
        ) from None


def _check_native_length(ds: Dataset, label: str, frame_bytes: int) -> None:
    """Uncompressed Pixel Data shorter than its header promises means a truncated file."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        return
    if not UID(syntax).is_transfer_syntax:
        raise InvalidDicomError(
            label, f"(0002,0010) TransferSyntaxUID {str(syntax)[:70]!r} is not a transfer syntax this reader knows; "
            "its pixel data cannot be decoded"
        )
    if UID(syntax).is_compressed:
        return
    expected = frame_bytes * number_of_frames(ds)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        expected = expected * 2 // 3  # chroma is subsampled: 2 samples per pixel are stored
    actual = len(ds.PixelData or b"")
    if actual < expected:
        raise InvalidDicomError(
            label,
            f"truncated: Pixel Data (7FE0,0010) holds {actual} bytes but Rows x Columns x frames needs {expected}",
        )


def _sop_class_name(uid: str | None) -> str:
    if not uid:
        return "an instance without SOPClassUID"
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else f"SOP Class {uid}"


def read_image(source: DicomSource) -> ReadImage:
    """Read `source` and check that it is a captionable image.

    Parameters
    ----------
    source
        A file path, the bytes of a DICOM file (Part 10, or a bare data set), or a pydicom
        ``Dataset``. A dataset is not modified.

    Returns
    -------
    ReadImage
        The dataset and the label used for it in messages.

    Raises
    ------
    NotDicomError, InvalidDicomError, NotAnImageError, DicomReadError
        With a message naming the source and what is wrong.
    """
    ds, label = read_dataset(source)
    check_image(ds, label)
    return ReadImage(ds, label)
