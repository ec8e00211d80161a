"""Drop unusable image-caption pairs before training, and say which and why.

Real ROCO copies contain rows whose image is missing, empty, truncated or not an image. Each row
is checked (in a thread pool: Pillow's and pydicom's decoders release the GIL) and dropped with
one reason:

``empty_caption``, ``missing``, ``zero_bytes``, ``truncated``, ``undecodable``.

JPEGs are decoded at 1/8 scale (``Image.draft``), which still reads every scan to the end, so a
truncated file is caught without paying for a full decode; DICOM files go through the core's
reader and pixel path exactly as in training. :func:`write_validation_report` writes the counts
(JSON) and the dropped rows (CSV).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from medblip_dicom.training.records import Record

logger = logging.getLogger(__name__)

REASONS = ("empty_caption", "missing", "zero_bytes", "truncated", "undecodable")


@dataclass
class ValidationReport:
    """Rows kept, rows dropped with their reason, and counts by reason."""

    kept: list[Record] = field(default_factory=list)
    dropped: list[tuple[Record, str, str]] = field(default_factory=list)  # (record, reason, detail)

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(reason for _, reason, _ in self.dropped)
        return {"kept": len(self.kept), "dropped": len(self.dropped), **{r: counter.get(r, 0) for r in REASONS}}


def check_record(record: Record) -> tuple[str, str] | None:
    """Return ``(reason, detail)`` when `record` must be dropped, else None."""
    if not record.caption.strip():
        return "empty_caption", "caption is empty"
    try:
        size = record.image.stat().st_size
    except FileNotFoundError:
        return "missing", f"{record.image} does not exist"
    except OSError as exc:
        return "missing", f"{record.image}: {exc}"
    if size == 0:
        return "zero_bytes", f"{record.image} is empty"
    with record.image.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM" or record.image.suffix.lower() == ".dcm":
        return _check_dicom(record.image)
    return _check_picture(record.image)


def _check_picture(path: Path) -> tuple[str, str] | None:
    try:
        with Image.open(path) as img:
            img.draft("RGB", (img.width // 8 or 1, img.height // 8 or 1))
            img.load()
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower() or "broken data stream" in text.lower():
            return "truncated", f"{path}: {text}"
        return "undecodable", f"{path}: {text}"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt files
        return "undecodable", f"{path}: {type(exc).__name__}: {exc}"
    return None


def _check_dicom(path: Path) -> tuple[str, str] | None:
    from medblip_dicom.errors import InvalidDicomError, MedblipError
    from medblip_dicom.pixels import dataset_to_array
    from medblip_dicom.reading import read_image

    try:
        found = read_image(path)
        dataset_to_array(found.dataset, label=found.label)
    except InvalidDicomError as exc:
        reason = "truncated" if "truncated" in str(exc) else "undecodable"
        return reason, str(exc)
    except MedblipError as exc:
        return "undecodable", str(exc)
    return None


def validate_records(records: Sequence[Record], workers: int | None = None) -> ValidationReport:
    """Check every record in parallel; keep order among the kept rows."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    report = ValidationReport()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medblip-validate") as pool:
        for record, problem in zip(records, pool.map(check_record, records, chunksize=64)):
            if problem is None:
                report.kept.append(record)
            else:
                report.dropped.append((record, *problem))
    if report.dropped:
        logger.warning("dropped %d of %d rows: %s", len(report.dropped), len(records),
                       {k: v for k, v in report.counts.items() if k in REASONS and v})
    return report


def write_validation_report(report: ValidationReport, out_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """Write ``<split>-validation.json`` (counts) and ``<split>-dropped.csv`` (id, image, reason, detail)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts_path = out / f"{split}-validation.json"
    counts_path.write_text(json.dumps(report.counts, indent=2) + "\n")
    dropped_path = out / f"{split}-dropped.csv"
    with dropped_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "reason", "detail"])
        for record, reason, detail in report.dropped:
            writer.writerow([record.id, str(record.image), reason, detail])
    return counts_path, dropped_path
