"""De-identified training data: manifests (``medblip train --data``), folders of DICOM, a data card.

:class:`ExportWriter` takes the rows of a manifest (``image`` + ``caption`` and the review
station's columns) or DICOM files one at a time and writes

- each image, de-identified (:mod:`.engine`), as ``images/<pseudonymous SOPInstanceUID>.dcm``
  under the output folder; images the burned-in text check refuses are left out and counted;
- each row with its ``image`` relative to the manifest (``medblip train --data`` reads it as it
  is), its texts (``caption``, ``ai_caption``, ``reason``) cleaned of the image's identifying
  header values (:mod:`.scrub`), its ids as keyed pseudonyms, its times shifted like the image's
  dates (or left out when dates are not kept), and only the columns known to be safe;
- :meth:`ExportWriter.card`: the data card (counts by modality and status, refusals by reason,
  rows whose captions changed, the date range after shifting, profile, options, libraries, the
  key's fingerprint, and what is not covered).

Log lines name rows by number and images by pseudonymous UID, never by path (a folder may be
named after a patient).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from medblip_dicom.deid.engine import Deidentifier, Result, shift_date
from medblip_dicom.errors import DicomReadError
from medblip_dicom.fileio import atomic_write_bytes
from medblip_dicom.reading import read_dataset

logger = logging.getLogger(__name__)

#: Columns whose free text is cleaned of the image's identifying values.
TEXT_COLUMNS = ("caption", "ai_caption", "reason")
#: Columns copied as they are (the model, flags, the reviewer pseudonym; the modality is read from the image).
SAFE_COLUMNS = ("edited", "model_name", "model_version", "modality", "reviewer", "split")
#: Columns that identify a row or a report: replaced by keyed pseudonyms.
ID_COLUMNS = ("id", "sr_uid")
#: Columns holding an ISO date-time: shifted like the image's dates, or left out.
TIME_COLUMNS = ("signed_at", "rejected_at")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")

NOT_COVERED = (
    "Text burned into the pixels of images the checks let through (modalities not named as risky, "
    "BurnedInAnnotation not YES); with a mask recipe, regions the recipe does not name.",
    "Identifying words in a caption that are not values of the image's header (a relative's name, "
    "a place not in the header, a date of another event).",
    "Private attributes are removed, not cleaned (the Retain Safe Private Option is not offered).",
    "Faces and other recognisable features in the pixels (surface renderings of head CT or MR).",
)


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_rows(manifest: Path) -> list[dict[str, Any]]:
    """The rows of a ``.jsonl`` or ``.csv`` manifest (the layouts ``medblip train --data`` reads)."""
    if manifest.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    with manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """`rows` as JSON lines, atomically."""
    return atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


class ExportWriter:
    """Writes de-identified images and rows under `out_dir` and keeps the counts for the card."""

    def __init__(self, deidentifier: Deidentifier, out_dir: str | os.PathLike[str]) -> None:
        self.deidentifier = deidentifier
        self.out_dir = Path(out_dir)
        self.images_dir = self.out_dir / "images"
        self.by_status: Counter[str] = Counter()
        self.by_modality: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.unreadable = 0
        self.captions_changed = 0
        self.rows_in = 0
        self.columns_dropped: Counter[str] = Counter()
        self.images: set[str] = set()
        self.dates: set[str] = set()
        self._cache: dict[str, tuple[Result, Path | None]] = {}

    def image(self, source: str | os.PathLike[str], label: str) -> tuple[Result | None, Path | None]:
        """De-identify and write one DICOM file: (the result, the written path) or (None, None)
        when it cannot be read; a refused image gives (result, None). `label` names it in logs."""
        key = os.path.realpath(source)
        if key in self._cache:
            return self._cache[key]
        try:
            ds, _ = read_dataset(source)
        except (DicomReadError, OSError):
            self.unreadable += 1
            logger.warning("%s: not a readable DICOM file; left out", label)
            return None, None
        result = self.deidentifier.dataset(ds)
        written = None
        if result.refused:
            self.refusals[result.refused] += 1
            logger.warning("%s (%s): %s; left out", label, self.deidentifier.pseudonyms.uid(str(ds.get("SOPInstanceUID", ""))),
                           result.refused)
        else:
            out = result.dataset
            assert out is not None
            self.images_dir.mkdir(parents=True, exist_ok=True)
            written = atomic_write_bytes(self.images_dir / f"{out.SOPInstanceUID}.dcm", _bytes(out))
            self.images.add(written.name)
            self.by_modality[str(out.get("Modality", "") or "unknown")] += 1
            date = next((str(out.get(k) or "") for k in ("StudyDate", "SeriesDate", "ContentDate") if out.get(k)), "")
            if date:
                self.dates.add(date)
        self._cache[key] = (result, written)
        return result, written

    def row(self, row: dict[str, Any], status: str, base: Path, number: int) -> dict[str, Any] | None:
        """One manifest row de-identified (module docstring), or None when its image is left out.
        `base` is the folder its relative image path is relative to; `number` names it in logs."""
        self.rows_in += 1
        source = next((row[k] for k in ("image", "image_path", "path") if row.get(k)), None)
        if not source:
            self.unreadable += 1
            logger.warning("row %d: no image; left out", number)
            return None
        path = Path(str(source))
        result, written = self.image(path if path.is_absolute() else base / path, f"row {number}")
        if result is None or written is None:
            return None
        out: dict[str, Any] = {}
        for column, value in row.items():
            if column in ("image", "image_path", "path"):
                continue
            if column in TEXT_COLUMNS:
                out[column] = result.identifiers.scrub(str(value or ""))
            elif column in SAFE_COLUMNS:
                out[column] = value
            elif column in ID_COLUMNS:
                text = str(value or "").strip()
                p = self.deidentifier.pseudonyms
                out[column] = p.uid(text) if _UID.match(text) else p.identifier(text, "row")
            elif column in TIME_COLUMNS:
                shifted = shift_time(str(value or ""), result.day_shift)
                if shifted:
                    out[column] = shifted
            else:
                self.columns_dropped[column] += 1
        out["image"] = os.path.relpath(written, self.out_dir)
        assert result.dataset is not None
        out["modality"] = str(result.dataset.get("Modality", "") or row.get("modality", ""))
        out = {"id": out.pop("id"), "image": out.pop("image"), **out} if "id" in out else {"image": out.pop("image"), **out}
        if any(out.get(c) != str(row.get(c) or "") for c in TEXT_COLUMNS if c in row):
            self.captions_changed += 1
        self.by_status[status] += 1
        return out

    def rows(self, rows: list[dict[str, Any]], status: str, base: Path) -> list[dict[str, Any]]:
        """Every row of a manifest through :meth:`row`; the rows left out are not returned."""
        return [r for n, row in enumerate(rows, 1) if (r := self.row(row, status, base, n)) is not None]

    def folder(self, source: str | os.PathLike[str]) -> int:
        """Every file under `source` (or the one file) through :meth:`image`; returns how many were written."""
        root = Path(source)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        written = 0
        for number, path in enumerate(files, 1):
            result, out = self.image(path, f"file {number}")
            if out is not None:
                written += 1
                self.by_status["file"] += 1
        return written

    def card(self, manifests: list[str]) -> dict[str, Any]:
        """The data card (module docstring)."""
        shifted = self.deidentifier.shift_dates
        return {
            "title": "De-identified imaging data",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "manifests": manifests,
            "images_folder": os.path.relpath(self.images_dir, self.out_dir),
            "deidentification": self.deidentifier.describe(),
            "counts": {"rows_in": self.rows_in, "images_written": len(self.images),
                       "refused_burned_in_text": sum(self.refusals.values()), "unreadable": self.unreadable,
                       "captions_changed": self.captions_changed},
            "by_status": dict(sorted(self.by_status.items())),
            "by_modality": dict(sorted(self.by_modality.items())),
            "refusals": dict(sorted(self.refusals.items())),
            "columns_dropped": sorted(self.columns_dropped),
            "dates": {"kept": "shifted by a per-patient number of days" if shifted else "removed",
                      "study_date_range": [min(self.dates), max(self.dates)] if shifted and self.dates else None},
            "not_covered": list(NOT_COVERED),
        }

    def write_card(self, path: str | os.PathLike[str], manifests: list[str]) -> Path:
        """The data card as JSON at `path`."""
        return atomic_write_bytes(Path(path), (json.dumps(self.card(manifests), indent=1, ensure_ascii=False)
                                               + "\n").encode("utf-8"))


def shift_time(value: str, days: int | None) -> str:
    """An ISO date-time moved by `days` (its time kept), or "" when dates are not kept or it is not one."""
    if days is None or len(value) < 10:
        return ""
    moved = shift_date(value[:10].replace("-", ""), days)
    return f"{moved[:4]}-{moved[4:6]}-{moved[6:]}{value[10:]}" if moved else ""


def rejected_sibling(manifest: Path) -> Path:
    """``FILE.jsonl`` -> ``FILE.rejected.jsonl`` (the review station's rejected reports)."""
    return manifest.with_name(f"{manifest.stem}.rejected{manifest.suffix}")


def deidentify(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               deidentifier: Deidentifier) -> dict[str, Any]:
    """De-identify a manifest (``.jsonl``/``.csv``, and its ``.rejected`` sibling when there is one)
    or a folder (or file) of DICOM into `out_dir`, with ``datacard.json``; returns the card.

    A manifest becomes ``out_dir/<name>.jsonl`` (``medblip train --data`` reads it); a folder becomes
    ``out_dir/images/``.
    """
    source, out = Path(source), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ExportWriter(deidentifier, out)
    manifests = []
    if source.is_file() and source.suffix.lower() in (".jsonl", ".csv"):
        for path, status in ((source, "manifest"), (rejected_sibling(source), "rejected")):
            if path.is_file():
                target = out / f"{path.stem}.jsonl"
                write_rows(target, writer.rows(read_rows(path), status, path.parent))
                manifests.append(target.name)
    else:
        writer.folder(source)
    writer.write_card(out / "datacard.json", manifests)
    return writer.card(manifests)
