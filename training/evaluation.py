"""Caption a split and score it: predictions, per-image scores, per-modality breakdown, plot.

Generation goes through :class:`medblip_dicom.captioner.CaptionGenerator`, the inference path of
``caption_dicom``; in a distributed run each process captions its share and rank 0 scores. What an
evaluation writes into its folder:

- ``predictions.csv``: id, reference, hypothesis;
- ``scores.csv``: one row per image with every per-image metric (:mod:`.caption_metrics`), its
  modality group and where the group came from (:mod:`.modality`);
- ``metrics.json``: the run's metrics, the same per modality group with counts, the optional
  metrics computed or the reason they were not, the definition of every metric, and the model
  (name, version, architecture, prompt, weights digest);
- ``scores.png``: per-image score distributions and per-modality bars.

During training, validation uses :func:`score` (corpus and sentence BLEU) only: it runs every epoch.
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

#: The per-image metrics drawn in scores.png.
PLOTTED = ("imageclef_bleu", "rougeL", "cider_d")


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


def score_rows(rows: Sequence[tuple[str, str, str]], images: Sequence[str | Path | None] | None = None,
               optional: Sequence[str] = ()) -> tuple[dict[str, Any], Any]:
    """``(metrics, scores table)`` of prediction rows; `images` (one per row) lets DICOM rows be
    grouped by their Modality attribute."""
    import pandas as pd

    from medblip_dicom.training.caption_metrics import (
        PER_IMAGE, definitions, optional_metrics, per_image_scores, run_metrics,
    )
    from medblip_dicom.training.modality import GROUPS, modality_of

    refs, hyps = [r[1] for r in rows], [r[2] for r in rows]
    per_image = per_image_scores(refs, hyps)
    extra, reasons = optional_metrics(optional, refs, hyps)
    images = list(images) if images is not None else [None] * len(rows)
    groups = [modality_of(image, ref) for image, ref in zip(images, refs)]
    table = pd.DataFrame({"id": [r[0] for r in rows], "reference": refs, "hypothesis": hyps,
                          "modality": [g for g, _ in groups], "modality_from": [s for _, s in groups],
                          **per_image, **extra})
    metrics: dict[str, Any] = {"samples": len(rows), **run_metrics(refs, hyps, per_image)}
    metrics.update({name: float(table[name].mean()) for name in extra})
    by_modality: dict[str, Any] = {}
    for group in GROUPS:
        part = table[table["modality"] == group]
        if len(part):
            by_modality[group] = {"count": len(part), **run_metrics(list(part["reference"]), list(part["hypothesis"]),
                                                                    {n: list(part[n]) for n in PER_IMAGE})}
    metrics["by_modality"] = by_modality
    metrics["not_computed"] = reasons
    metrics["definitions"] = definitions(list(extra))
    return metrics, table


def evaluate_model(captioner: CaptionGenerator, records: Sequence[Record], out_dir: str | os.PathLike[str],
                   batch_size: int = 16, progress: bool = False, optional: Sequence[str] = ()) -> dict[str, Any]:
    """Caption `records` and write the evaluation folder (see the module docstring); return metrics."""
    from medblip_dicom.training.plot import plot_scores

    started = time.perf_counter()
    rows = generate_predictions(captioner, records, batch_size, progress)
    metrics, table = score_rows(rows, [r.image for r in records], optional)
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    identity = getattr(captioner, "identity", None)
    if identity is not None:  # which model, asked what: two runs compared must say who they are
        metrics["model"] = {"name": identity.name, "version": identity.version, "architecture": identity.architecture,
                            "prompt": identity.prompt, "weights_sha256": identity.weights_sha256}
    out = Path(out_dir)
    write_predictions(rows, out / "predictions.csv")
    table.to_csv(out / "scores.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if len(table):
        plot_scores(table, out / "scores.png", PLOTTED)
    for name, reason in metrics["not_computed"].items():
        logger.warning("%s %s", name, reason)
    return metrics
