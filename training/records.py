"""Image-caption pairs from ROCO (both public layouts) or a user's manifest.

Layouts, detected from the folder given as ``root`` (the folder that holds ``data/`` or
``all_data/``, or that folder itself):

- **Original repository layout** (``data/<split>/<subset>/``): ``captions.txt`` with lines
  ``ROCO_00020<TAB> caption`` (a space follows the tab), ``licences.txt`` CSV ``ROCO_ID,PMC_ID,CC``,
  images as ``images/ROCO_xxxxx.jpg`` or under the PMC file name from ``licences.txt``.
- **Kaggle layout** (``all_data/<split>/<subset>/``): ``images/`` with ``traindata.csv`` /
  ``valdata.csv`` / ``testdata.csv`` inside the subset folder, or
  ``all_data/<split>/<subset>{train,val,test}data.csv`` beside it; columns ``id,name,caption``.
- **Manifest**: a ``.csv`` (columns ``image`` or ``image_path`` or ``path``, and ``caption``; an ``id``
  column is optional) or ``.jsonl`` file (one object per line with the same keys). Relative image
  paths are relative to the manifest. DICOM images are allowed: they go through the core's pixel path.

Splits are ``train``, ``validation`` (alias ``val``) and ``test``; the subset is ``radiology`` by
default, ``non-radiology`` on request.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from medblip_dicom.errors import MedblipError

SPLITS = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}
_KAGGLE_CSV = {"train": "train", "validation": "val", "test": "test"}


class DataLayoutError(MedblipError, ValueError):
    """The data folder or manifest is not in a layout we know."""


@dataclass(frozen=True)
class Record:
    """One image-caption pair. ``id`` is the ROCO id (or the manifest's id or row number)."""

    id: str
    image: Path
    caption: str


def normalise_split(split: str) -> str:
    """``val`` -> ``validation``; raises for unknown split names."""
    try:
        return SPLITS[split.lower()]
    except KeyError:
        raise DataLayoutError(f"unknown split {split!r}; use train, validation or test") from None


def detect_layout(root: str | os.PathLike[str]) -> tuple[str, Path]:
    """Return ``("manifest" | "roco" | "kaggle", base)`` for `root`."""
    path = Path(root)
    if path.is_file():
        if path.suffix.lower() in (".csv", ".jsonl"):
            return "manifest", path
        raise DataLayoutError(f"{path}: a manifest must be a .csv or .jsonl file")
    if not path.is_dir():
        raise DataLayoutError(f"{path}: no such folder or manifest")
    for name, layout in (("data", "roco"), ("all_data", "kaggle")):
        if (path / name).is_dir():
            return layout, path / name
    if path.name == "data" and any((path / s).is_dir() for s in ("train", "validation", "test")):
        if any((path / s / "radiology" / "captions.txt").exists() for s in ("train", "validation", "test")):
            return "roco", path
    if path.name == "all_data":
        return "kaggle", path
    raise DataLayoutError(
        f"{path}: no ROCO data found; expected data/<split>/radiology/captions.txt (original layout), "
        "all_data/<split>/radiology/ (Kaggle layout) or a .csv/.jsonl manifest"
    )


def load_records(root: str | os.PathLike[str], split: str = "train", subset: str = "radiology") -> list[Record]:
    """Load the image-caption pairs of one split (see the module docstring for the layouts).

    Rows are returned as listed; whether their images exist and open is checked by
    :func:`medblip_dicom.training.validation.validate_records`.
    """
    layout, base = detect_layout(root)
    if layout == "manifest":
        return _load_manifest(base)
    split = normalise_split(split)
    if layout == "roco":
        return _load_roco(base / split / subset)
    return _load_kaggle(base / split, subset, split)


def _load_roco(folder: Path) -> list[Record]:
    captions_file = folder / "captions.txt"
    if not captions_file.is_file():
        raise DataLayoutError(f"{captions_file}: missing (original ROCO layout)")
    pmc_names: dict[str, str] = {}
    licences = folder / "licences.txt"
    if licences.is_file():
        with licences.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("ROCO_ID") and row.get("PMC_ID"):
                    pmc_names[row["ROCO_ID"].strip()] = row["PMC_ID"].strip()
    images = folder / "images"
    records = []
    with captions_file.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            roco_id, _, caption = line.rstrip("\n").partition("\t")
            roco_id = roco_id.strip()
            image = images / f"{roco_id}.jpg"
            if not image.exists() and roco_id in pmc_names:
                image = images / pmc_names[roco_id]
            records.append(Record(roco_id, image, caption.strip()))
    return records


def _load_kaggle(split_dir: Path, subset: str, split: str) -> list[Record]:
    stem = f"{_KAGGLE_CSV[split]}data.csv"
    folder = split_dir / subset
    candidates = [folder / stem, split_dir / f"{subset}{stem}"]
    table = next((c for c in candidates if c.is_file()), None)
    if table is None:
        raise DataLayoutError(f"{split_dir}: none of {', '.join(str(c) for c in candidates)} exists (Kaggle layout)")
    records = []
    with table.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("name") or "").strip()
            records.append(Record((row.get("id") or name).strip(), folder / "images" / name, (row.get("caption") or "").strip()))
    return records


def _manifest_row(row: dict[str, object], index: int, base: Path, manifest: Path) -> Record:
    image = next((row[k] for k in ("image", "image_path", "path") if row.get(k)), None)
    if image is None or "caption" not in row:
        raise DataLayoutError(f"{manifest}: row {index + 1} needs an image (image/image_path/path) and a caption")
    path = Path(str(image))
    if not path.is_absolute():
        path = base / path
    return Record(str(row.get("id") or index + 1), path, str(row.get("caption") or "").strip())


def _load_manifest(manifest: Path) -> list[Record]:
    base = manifest.parent
    if manifest.suffix.lower() == ".jsonl":
        rows = []
        with manifest.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise DataLayoutError(f"{manifest}: line {number} is not JSON ({exc})") from None
    else:
        with manifest.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    return [_manifest_row(row, i, base, manifest) for i, row in enumerate(rows)]
