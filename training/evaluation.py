"""Caption a split and score it: predictions file + BLEU metrics.

Generation goes through :class:`medblip_dicom.captioner.Captioner`, the inference path of
``caption_dicom``; in a distributed run each process captions its share and rank 0 scores.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip_dicom.captioner import CaptionGenerator
from medblip_dicom.pixels import open_image
from medblip_dicom.training.bleu import SMOOTHING, TOKENISATION, bleu_scores
from medblip_dicom.training.records import Record

logger = logging.getLogger(__name__)


def generate_predictions(captioner: CaptionGenerator, records: Sequence[Record], batch_size: int = 16,
                         progress: bool = False) -> list[tuple[str, str, str]]:
    """``(id, reference, hypothesis)`` for each record, in order."""
    rows: list[tuple[str, str, str]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="img", desc="evaluate")
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        hypotheses = captioner.caption([open_image(r.image) for r in chunk])
        rows.extend((r.id, r.caption, h) for r, h in zip(chunk, hypotheses))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return rows


def score(rows: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """BLEU scores of prediction rows, with the tokenisation and smoothing written out."""
    metrics: dict[str, Any] = bleu_scores([r[1] for r in rows], [r[2] for r in rows])
    metrics.update(samples=len(rows), tokenisation=TOKENISATION, smoothing=SMOOTHING)
    return metrics


def write_predictions(rows: Sequence[tuple[str, str, str]], path: str | os.PathLike[str]) -> Path:
    """CSV with columns id, reference, hypothesis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "reference", "hypothesis"])
        writer.writerows(rows)
    return path


def evaluate_model(captioner: CaptionGenerator, records: Sequence[Record], out_dir: str | os.PathLike[str],
                   batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """Caption `records`, write ``predictions.csv`` and ``metrics.json`` in `out_dir`; return metrics."""
    started = time.perf_counter()
    rows = generate_predictions(captioner, records, batch_size, progress)
    metrics = score(rows)
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    out = Path(out_dir)
    write_predictions(rows, out / "predictions.csv")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
