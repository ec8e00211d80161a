"""Inputs good and bad: real images re-issued with fresh UIDs, and every kind of malformed file."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from tests.support.dicom import load_template, reissue, testdata
from tests.support.figures import seed
from tests.support.privacy import PATIENT_ID, PATIENT_NAME


#: Small real images (every codec family the node accepts) that the floods re-issue with fresh UIDs.
FLOOD_TEMPLATES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                   "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm")


def make_good_files(folder: Path, count: int, *, studies: int = 10, templates: Sequence[str] = FLOOD_TEMPLATES,
                    rng: random.Random | None = None) -> dict[str, Path]:
    """`count` real test images re-issued with fresh UIDs into `studies` studies; {SOPInstanceUID: path}."""
    rng = rng or random.Random(seed())
    loaded = [load_template(name) for name in templates]
    study_uids = [generate_uid() for _ in range(max(1, studies))]
    series = {(s, i): generate_uid() for s in range(len(study_uids)) for i in range(len(loaded))}
    out: dict[str, Path] = {}
    for n in range(count):
        k = n % len(loaded)
        s = rng.randrange(len(study_uids))
        ds = loaded[k]
        ds.SeriesInstanceUID = series[(s, k)]
        path, uid = reissue(ds, folder, study_uid=study_uids[s], instance_number=n + 1)
        out[uid] = path
    return out


@dataclass
class BadInput:
    """A malformed input and what must become of it: ``failed`` (quarantined) or ``skipped``
    (a valid non-image: recorded with a reason, never captioned)."""

    path: Path
    kind: str
    expect: str  # "failed" | "skipped"


def _header_only(template: str, **attrs: Any) -> Dataset:
    ds = load_template(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _save(ds: Dataset, path: Path, *, enforce: bool = True) -> Path:
    ds.save_as(path, enforce_file_format=enforce)
    return path


def _truncated(folder: Path, i: int, rng: random.Random) -> BadInput:
    name = rng.choice(("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                       "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "US1_UNCR.dcm"))
    buf = io.BytesIO()
    ds = _header_only(name)
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    # At least one byte kept and at least 9 cut: the last 8 bytes of an encapsulated file are the
    # sequence delimiter (tag + a zero length); a file missing only part of that lost no data, and
    # pydicom (rightly) reads it whole.
    cut = rng.randrange(1, len(data) - 8)
    path = folder / f"bad-{i:05d}-truncated.dcm"
    path.write_bytes(data[:cut])
    return BadInput(path, f"truncated ({name})", "failed")


def _random_bytes(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-random.dcm"
    path.write_bytes(rng.randbytes(rng.randrange(1, 64 * 1024)))
    return BadInput(path, "random bytes", "failed")


def _dicm_then_junk(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-dicm-junk.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + rng.randbytes(rng.randrange(1, 8192)))
    return BadInput(path, "DICM prefix then random bytes", "failed")


_BOGUS_SYNTAXES = {
    "JPEG 2000": "1.2.840.10008.1.2.4.90",
    "JPEG baseline": "1.2.840.10008.1.2.4.50",
    "JPEG-LS": "1.2.840.10008.1.2.4.80",
    "RLE": "1.2.840.10008.1.2.5",
    "JPEG lossless": "1.2.840.10008.1.2.4.70",
}


def _bogus_pixels(folder: Path, i: int, rng: random.Random) -> BadInput:
    """A valid header whose Pixel Data is garbage in the syntax the header names (or too short)."""
    choice = rng.choice([*_BOGUS_SYNTAXES, "native, short", "native, 2 bytes short"])
    ds = _header_only("MR_small.dcm")
    if choice.startswith("native"):
        size = 64 * 64 * 2
        n = rng.randrange(0, size // 2) if choice == "native, short" else size - 2
        ds.PixelData = rng.randbytes(n)
    else:
        ds.file_meta.TransferSyntaxUID = UID(_BOGUS_SYNTAXES[choice])
        ds.PixelData = encapsulate([rng.randbytes(rng.randrange(16, 4096))])
        ds["PixelData"].VR = "OB"
    path = folder / f"bad-{i:05d}-bogus-pixels.dcm"
    return BadInput(_save(ds, path, enforce=False), f"bogus pixel data ({choice})", "failed")


def _huge_dimensions(folder: Path, i: int, rng: random.Random) -> BadInput:
    """Rows = Columns = 65535: must be refused from the header, never decoded."""
    choice = rng.choice(["native", "JPEG 2000", "RLE", "JPEG baseline"])
    ds = _header_only("MR_small.dcm", Rows=65535, Columns=65535)
    if choice != "native":
        ds.file_meta.TransferSyntaxUID = UID(_BOGUS_SYNTAXES[choice])
        source = pydicom.dcmread(testdata({"JPEG 2000": "MR_small_jp2klossless.dcm", "RLE": "MR_small_RLE.dcm",
                                           "JPEG baseline": "SC_rgb_jpeg_dcmtk.dcm"}[choice]))
        ds.PixelData = source.PixelData
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path = folder / f"bad-{i:05d}-65535x65535.dcm"
    return BadInput(_save(ds, path, enforce=False), f"claimed 65535 x 65535 ({choice})", "failed")


def _missing_transfer_syntax(folder: Path, i: int, rng: random.Random) -> BadInput:
    """Compressed pixel data, but the file meta has no (0002,0010) TransferSyntaxUID."""
    name = rng.choice(("MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"))
    ds = _header_only(name)
    del ds.file_meta["TransferSyntaxUID"]
    path = folder / f"bad-{i:05d}-no-transfer-syntax.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return BadInput(path, f"missing transfer syntax ({name})", "failed")


def _non_image(folder: Path, i: int, rng: random.Random) -> BadInput:
    name = rng.choice(("test-SR.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm", "rtdose.dcm", "liver.dcm"))
    ds = pydicom.dcmread(testdata(name), force=True)
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.SOPInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"bad-{i:05d}-non-image.dcm"
    return BadInput(_save(ds, path, enforce=False), f"non-image SOP class ({name})", "skipped")


def _dicomdir(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-DICOMDIR"
    path.write_bytes(Path(testdata("DICOMDIR")).read_bytes())
    return BadInput(path, "DICOMDIR", "skipped")


def _zero_bytes(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-empty.dcm"
    path.write_bytes(b"")
    return BadInput(path, "zero bytes", "failed")


def _jpeg_renamed(folder: Path, i: int, rng: random.Random) -> BadInput:
    from PIL import Image

    image = Image.frombytes("L", (32, 32), rng.randbytes(32 * 32))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    path = folder / f"bad-{i:05d}-photo.dcm"
    path.write_bytes(buf.getvalue())
    return BadInput(path, "a JPEG renamed .dcm", "failed")


def _huge_private_tag(folder: Path, i: int, rng: random.Random) -> BadInput:
    """A private element whose length claims up to 4 GiB, followed by a few bytes: the file ends early."""
    ds = _header_only("MR_small.dcm")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    pixel_at = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) in explicit VR little endian
    length = rng.choice((0xFFFFFFF0, 0x7FFFFFFF, 1 << 30, 50_000_000))
    private = (b"\x09\x00\x10\x00LO\x08\x00MEDBLIPX"  # (0009,0010) private creator
               + b"\x09\x00\x00\x10OB\x00\x00" + length.to_bytes(4, "little") + rng.randbytes(64))
    path = folder / f"bad-{i:05d}-huge-private.dcm"
    path.write_bytes(data[:pixel_at] + private)
    return BadInput(path, f"huge private tag (claims {length} bytes)", "failed")


def _absurd_header(folder: Path, i: int, rng: random.Random) -> BadInput:
    """Header values that cannot describe an image: zero or odd bit depths, no samples, unknown colour."""
    choice = rng.choice(["BitsAllocated 0", "BitsAllocated 7", "BitsAllocated 64", "SamplesPerPixel 0",
                         "PhotometricInterpretation NONSENSE", "NumberOfFrames 1000000000", "Rows 0",
                         "BitsStored > BitsAllocated", "PlanarConfiguration 7 on RGB"])
    base = "SC_rgb.dcm" if "RGB" in choice else "MR_small.dcm"
    ds = _header_only(base)
    key, _, value = choice.partition(" ")
    if choice == "BitsStored > BitsAllocated":
        ds.BitsStored = 40
    elif choice == "PlanarConfiguration 7 on RGB":
        ds.PlanarConfiguration = 7
    elif key == "PhotometricInterpretation":
        ds.PhotometricInterpretation = value
    else:
        setattr(ds, key, int(value))
    path = folder / f"bad-{i:05d}-absurd-header.dcm"
    return BadInput(_save(ds, path, enforce=False), f"absurd header ({choice})", "failed")


_BAD_MAKERS: list[Callable[[Path, int, random.Random], BadInput]] = [
    _truncated, _truncated, _truncated, _random_bytes, _dicm_then_junk, _bogus_pixels, _bogus_pixels,
    _huge_dimensions, _missing_transfer_syntax, _non_image, _dicomdir, _zero_bytes, _jpeg_renamed,
    _huge_private_tag, _absurd_header,
]


def _deflate_bomb(folder: Path, i: int, rng: random.Random) -> BadInput:
    path = folder / f"bad-{i:05d}-deflate-bomb.dcm"
    path.write_bytes(deflate_bomb_bytes())
    return BadInput(path, "deflate bomb (1 MiB inflating to 1 GiB)", "failed")


def make_bad_inputs(folder: Path, count: int, rng: random.Random) -> list[BadInput]:
    """`count` malformed inputs, every kind of :data:`_BAD_MAKERS` in turn (truncations weighted),
    and a deflate bomb every 50th (each costs about a second of inflating to refuse it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [_deflate_bomb(folder, i, rng) if i % 50 == 49 else _BAD_MAKERS[i % len(_BAD_MAKERS)](folder, i, rng)
            for i in range(count)]


def drop_into(inbox: Path, files: Iterable[Path]) -> int:
    """Move files into the inbox by rename (each appears complete at once); returns how many."""
    inbox.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in files:
        os.rename(path, inbox / path.name)
        n += 1
    return n


_BOMB_CACHE: dict[int, bytes] = {}


def deflate_bomb_bytes(side: int = 23000) -> bytes:
    """A Part 10 file in Deflated Explicit VR Little Endian whose data set inflates to about
    side x side x 2 bytes of zero pixels (1 GiB for 23000) from about a megabyte: built by streaming
    zlib over the zeros, so making it costs no memory. Cached per process."""
    if side in _BOMB_CACHE:
        return _BOMB_CACHE[side]
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = load_template("MR_small.dcm")
    del ds.PixelData
    ds.Rows = ds.Columns = side
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = side * side * 2
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body.getvalue()), comp.compress(b"\xe0\x7f\x10\x00OW\x00\x00" + n.to_bytes(4, "little"))]
    zeros = bytes(1 << 20)
    for _ in range(n // len(zeros)):
        parts.append(comp.compress(zeros))
    parts += [comp.compress(bytes(n % len(zeros))), comp.flush()]
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    _BOMB_CACHE[side] = b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)
    return _BOMB_CACHE[side]
