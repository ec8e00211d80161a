"""Two runs on the same references, side by side, with paired bootstrap 95% confidence intervals.

``medblip evaluate --compare RUN_A RUN_B`` reads two ``predictions.csv`` files (columns id,
reference, hypothesis) that caption the same images against the same references, scores both with
:mod:`.caption_metrics`, and for every metric reports A, B, B - A and a 95% interval for B - A:

- **Paired bootstrap**: ``resamples`` times (default 1000) draw n images with replacement, the same
  draw for A and B (a seeded ``numpy.random.Generator``, default seed 0: the same seed gives the
  same interval), compute the metric of both on the draw, keep B - A; the interval is the 2.5th and
  97.5th percentiles of those differences. ``p_b_not_better`` is the share of draws where B - A <= 0.
- Per-image metrics (ROUGE, ImageCLEF BLEU, sentence BLEU-4, CIDEr-D) are averaged over the draw;
  CIDEr-D's per-image values keep the document frequencies of the full reference set (the usual
  shortcut; recomputing them per draw would change the metric being compared).
- Corpus BLEU-4 is recomputed on each draw from each image's n-gram counts (the statistics
  NLTK's ``corpus_bleu`` sums), so it is the corpus metric, not a mean.

"B beats A" is supported when the whole interval is above zero.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medblip_dicom.errors import MedblipError
from medblip_dicom.training.bleu import tokenize
from medblip_dicom.training.caption_metrics import PER_IMAGE, per_image_scores


class CompareError(MedblipError, ValueError):
    """The two runs cannot be compared (different images or references)."""


def read_predictions(path: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """``(id, reference, hypothesis)`` rows of a predictions file."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"id", "reference", "hypothesis"} - set(reader.fieldnames or ())
            if missing:
                raise CompareError(f"{path}: not a predictions file (missing column {sorted(missing)[0]!r})")
            return [(row["id"], row["reference"], row["hypothesis"]) for row in reader]
    except OSError as exc:
        raise CompareError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def bleu_statistics(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Per image: clipped n-gram matches and candidate n-grams for n = 1..4, then candidate and
    reference lengths (the sums :func:`corpus_bleu4` needs), shape (n, 10)."""
    rows = []
    for ref, hyp in zip(references, hypotheses):
        r, h = tokenize(ref), tokenize(hyp)
        row = []
        for n in range(1, 5):
            hyp_grams = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            ref_grams = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            row += [sum(min(c, ref_grams[g]) for g, c in hyp_grams.items()), max(len(h) - n + 1, 0)]
        rows.append(row + [len(h), len(r)])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 10)


def corpus_bleu4(stats: np.ndarray) -> float:
    """Corpus BLEU-4 from summed statistics (uniform weights, no smoothing: NLTK's corpus_bleu)."""
    total = stats.sum(axis=0)
    matches, counts = total[0:8:2], total[1:8:2]
    if np.any(matches == 0) or total[8] == 0:
        return 0.0
    log_precision = float(np.mean(np.log(matches / counts)))
    hyp_len, ref_len = total[8], total[9]
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def compare_runs(a: Sequence[tuple[str, str, str]], b: Sequence[tuple[str, str, str]], *,
                 resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every metric of run A and run B, B - A, and its paired bootstrap 95% interval."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    by_id_b = {row[0]: row for row in b}
    if len(a) != len(b) or set(by_id_b) != {row[0] for row in a}:
        raise CompareError("the two runs do not caption the same images (their ids differ)")
    b = [by_id_b[row[0]] for row in a]
    wrong = [ra[0] for ra, rb in zip(a, b) if ra[1] != rb[1]]
    if wrong:
        raise CompareError(f"the two runs have different references (e.g. image {wrong[0]!r})")
    refs = [row[1] for row in a]
    if not refs:
        raise CompareError("the runs hold no predictions")
    scores = {run: per_image_scores(refs, [row[2] for row in rows]) for run, rows in (("a", a), ("b", b))}
    stats = {run: bleu_statistics(refs, [row[2] for row in rows]) for run, rows in (("a", a), ("b", b))}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(refs), size=(resamples, len(refs)))
    out: dict[str, Any] = {}
    for name in ("bleu4", *PER_IMAGE):
        if name == "bleu4":
            value = {run: corpus_bleu4(stats[run]) for run in ("a", "b")}
            diffs = np.array([corpus_bleu4(stats["b"][d]) - corpus_bleu4(stats["a"][d]) for d in draws])
        else:
            arrays = {run: np.asarray(scores[run][name]) for run in ("a", "b")}
            value = {run: float(arrays[run].mean()) for run in ("a", "b")}
            diffs = arrays["b"][draws].mean(axis=1) - arrays["a"][draws].mean(axis=1)
        low, high = np.percentile(diffs, [2.5, 97.5])
        out[name] = {"a": value["a"], "b": value["b"], "difference": value["b"] - value["a"],
                     "ci95": [float(low), float(high)], "p_b_not_better": float(np.mean(diffs <= 0)),
                     "b_better": bool(low > 0), "b_worse": bool(high < 0)}
    return {"images": len(refs), "resamples": resamples, "seed": seed, "metrics": out,
            "method": "paired bootstrap over images; 95% interval = 2.5th..97.5th percentile of B - A"}


def format_comparison(result: dict[str, Any], a: str | Path, b: str | Path) -> str:
    """The comparison as an aligned table."""
    lines = [f"A = {a}", f"B = {b}", f"{result['images']} images, {result['resamples']} paired bootstrap "
             f"resamples, seed {result['seed']}", "",
             f"{'metric':<16}{'A':>10}{'B':>10}{'B - A':>10}   95% interval of B - A"]
    for name, m in result["metrics"].items():
        verdict = "B better" if m["b_better"] else "B worse" if m["b_worse"] else "no clear difference"
        lines.append(f"{name:<16}{m['a']:>10.4f}{m['b']:>10.4f}{m['difference']:>+10.4f}   "
                     f"[{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]  {verdict}")
    return "\n".join(lines)
