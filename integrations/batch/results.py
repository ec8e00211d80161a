"""The results table of a batch job: one row per input file, written atomically, and its summary.

Columns (:data:`COLUMNS`): ``path``, ``sop_instance_uid``, ``series_instance_uid``, ``status``
(``captioned``, ``skipped``, ``failed``), ``kind`` (why, as a word: the error class, or the
selection kind ``localizer`` / ``rule`` / ``not_representative`` / ``not_an_image``, or ``Duplicate``
for a later file of a SOPInstanceUID: :mod:`medblip_dicom.duplicates`), ``reason`` (the sentence), ``sr_path``, ``sr_sop_instance_uid``, ``caption``, ``model_name``, ``model_version`` and
the timings in seconds (``read_s``, ``pixels_s``, ``preprocess_s``, ``caption_s`` per image of its
batch, ``report_s``, ``write_s``). ``.parquet`` (the default) or ``.csv``, chosen by the name.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medblip_dicom.fileio import atomic_write_bytes
from medblip_dicom.integrations.batch.stages import TIMING_COLUMNS

STATUSES = ("captioned", "skipped", "failed")
COLUMNS = ("path", "sop_instance_uid", "series_instance_uid", "status", "kind", "reason", "sr_path",
           "sr_sop_instance_uid", "caption", "model_name", "model_version", *TIMING_COLUMNS)


def empty_row(path: str) -> dict[str, Any]:
    """A row with every column present (text empty, timings 0)."""
    row: dict[str, Any] = {c: "" for c in COLUMNS}
    row.update({c: 0.0 for c in TIMING_COLUMNS}, path=path)
    return row


def skipped_row(path: str, reason: str, kind: str, *, sop_instance_uid: str = "",
                series_instance_uid: str = "") -> dict[str, Any]:
    row = empty_row(path)
    row.update(status="skipped", kind=kind, reason=reason, sop_instance_uid=sop_instance_uid,
               series_instance_uid=series_instance_uid)
    return row


def table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame with exactly :data:`COLUMNS`, in that order."""
    frame = pd.DataFrame(list(rows))
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = 0.0 if column in TIMING_COLUMNS else ""
    frame = frame[list(COLUMNS)]
    text = [c for c in COLUMNS if c not in TIMING_COLUMNS]
    frame[text] = frame[text].fillna("").astype(str)
    frame[list(TIMING_COLUMNS)] = frame[list(TIMING_COLUMNS)].astype(float).fillna(0.0)
    return frame.reset_index(drop=True)


def write_table(frame: pd.DataFrame, target: str | os.PathLike[str]) -> Path:
    """Write `frame` to `target` (``.parquet`` or ``.csv``) atomically: a reader sees the old or the new table."""
    target = Path(target)
    buffer = io.BytesIO()
    if target.suffix.lower() == ".csv":
        frame.to_csv(buffer, index=False)
    elif target.suffix.lower() == ".parquet":
        frame.to_parquet(buffer, index=False)
    else:
        raise ValueError(f"{target}: the results table must be a .parquet or .csv file")
    return atomic_write_bytes(target, buffer.getvalue())


def summary(frame: pd.DataFrame, elapsed_s: float) -> str:
    """Counts by status and kind, and images captioned per second (wall clock of the job)."""
    counts = frame["status"].value_counts()
    captioned = int(counts.get("captioned", 0))
    rate = captioned / elapsed_s if elapsed_s > 0 else 0.0
    head = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES)
    lines = [f"{len(frame)} files: {head}; {captioned} images in {elapsed_s:.1f} s, {rate:.2f} images/s"]
    others = frame[frame["status"] != "captioned"]
    for (status, kind), n in others.groupby(["status", "kind"]).size().sort_index().items():
        lines.append(f"  {status:<9} {kind or '-'}: {n}")
    return "\n".join(lines)
