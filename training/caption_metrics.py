"""Every caption metric `medblip evaluate` reports, computed the way :data:`DEFINITIONS` states.

Per image (the columns of ``scores.csv``): mean-able scores of each prediction against its one
reference. Per run (``metrics.json``): corpus BLEU-1..4 (:mod:`.bleu`), CIDEr-D (a corpus metric:
its document frequencies come from all references) and the means of the per-image scores.

- **ROUGE-1, ROUGE-2, ROUGE-L**: F-measure from Google's ``rouge-score`` package
  (``RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``: its own tokeniser, lower-case
  alphanumeric tokens, Porter stemming; no data needed).
- **CIDEr-D**: ``pycocoevalcap``'s ``Cider`` scorer (the coco-caption implementation: CIDEr-D, n = 1..4,
  sigma 6, length penalty and clipping, x10), on text tokenised by :func:`.bleu.tokenize` and joined
  by spaces (coco-caption's Java PTB tokenizer is not used).
- **ImageCLEF-style BLEU**: :mod:`.imageclef`.
- **Sentence BLEU-4** (the original notebook's): :mod:`.bleu`.

Metrics that need weights or data that cannot be downloaded here are never faked: BERTScore,
BLEURT and CLIPScore need their models, METEOR needs NLTK's WordNet data. :func:`optional_metrics`
computes METEOR when WordNet is installed and says in one line why each other one was not computed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from medblip_dicom.training.bleu import SMOOTHING, TOKENISATION, bleu_scores, sentence_bleu4, tokenize
from medblip_dicom.training.imageclef import DEFINITION as IMAGECLEF_DEFINITION
from medblip_dicom.training.imageclef import imageclef_bleu_scores

#: The per-image score columns, in the order ``scores.csv`` has them.
PER_IMAGE = ("sentence_bleu4", "imageclef_bleu", "rouge1", "rouge2", "rougeL", "cider_d")
#: Optional metrics (``--metrics``): computed only when their model or data is here.
OPTIONAL = ("meteor", "bertscore", "bleurt", "clipscore")

DEFINITIONS = {
    "tokenisation": TOKENISATION,
    "bleu": "corpus BLEU-1..4: NLTK corpus_bleu, uniform weights, one reference, no smoothing",
    "sentence_bleu4": "NLTK sentence_bleu per image, uniform 4-gram weights, " + SMOOTHING.split("; ")[1],
    "imageclef_bleu": IMAGECLEF_DEFINITION,
    "rouge": "rouge-score RougeScorer(['rouge1','rouge2','rougeL'], use_stemmer=True), F-measure per image, mean",
    "cider_d": "pycocoevalcap Cider (coco-caption CIDEr-D: n=1..4, sigma=6, x10) on the tokenisation above; "
               "document frequencies from all references of the run; per-image values and their mean",
    "meteor": "NLTK meteor_score (WordNet) on the tokenisation above, per image, mean; only with WordNet data",
}


def per_image_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, list[float]]:
    """Every per-image metric of :data:`PER_IMAGE`, one value per (reference, hypothesis) pair."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, h) for r, h in zip(references, hypotheses)]
    return {
        "sentence_bleu4": [sentence_bleu4(r, h) for r, h in zip(references, hypotheses)],
        "imageclef_bleu": imageclef_bleu_scores(references, hypotheses),
        "rouge1": [s["rouge1"].fmeasure for s in rouge],
        "rouge2": [s["rouge2"].fmeasure for s in rouge],
        "rougeL": [s["rougeL"].fmeasure for s in rouge],
        "cider_d": cider_d(references, hypotheses)[1],
    }


def cider_d(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, list[float]]:
    """CIDEr-D of the run and of each image (see the module docstring)."""
    if not references:
        return 0.0, []
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(tokenize(r))] for i, r in enumerate(references)}
    res = {i: [" ".join(tokenize(h)) or "<empty>"] for i, h in enumerate(hypotheses)}
    score, per_image = Cider().compute_score(gts, res)
    return float(score), [float(v) for v in per_image]


def run_metrics(references: Sequence[str], hypotheses: Sequence[str],
                per_image: dict[str, list[float]] | None = None) -> dict[str, float]:
    """The run's numbers: corpus BLEU-1..4 and the mean of each per-image metric (CIDEr-D's mean
    is its corpus value)."""
    per_image = per_image if per_image is not None else per_image_scores(references, hypotheses)
    out: dict[str, float] = {k: v for k, v in bleu_scores(references, hypotheses).items() if k != "sentence_bleu4"}
    for name in PER_IMAGE:
        values = per_image[name]
        out[name] = float(sum(values) / len(values)) if values else 0.0
    return out


def optional_metrics(names: Sequence[str], references: Sequence[str],
                     hypotheses: Sequence[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """``(per-image scores, reasons)``: what of `names` could be computed here, and why not the rest."""
    unknown = sorted(set(names) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; optional metrics: {', '.join(OPTIONAL)}")
    computed: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    for name in names:
        if name == "meteor":
            reason = _wordnet_missing()
            if reason is None:
                from nltk.translate.meteor_score import meteor_score

                computed["meteor"] = [float(meteor_score([tokenize(r)], tokenize(h)))
                                      for r, h in zip(references, hypotheses)]
            else:
                reasons["meteor"] = reason
        elif name == "bertscore":
            reasons[name] = ("not computed: BERTScore needs the bert-score package and its RoBERTa model "
                             "weights, which cannot be downloaded here" if importlib.util.find_spec("bert_score") is None
                             else "not computed: BERTScore's model weights are not available offline here")
        elif name == "bleurt":
            reasons[name] = "not computed: BLEURT needs its TensorFlow checkpoint, which cannot be downloaded here"
        else:
            reasons[name] = "not computed: CLIPScore needs a CLIP model's weights, which cannot be downloaded here"
    return computed, reasons


def _wordnet_missing() -> str | None:
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
    except LookupError:
        return "not computed: METEOR needs NLTK's WordNet data (nltk.download('wordnet') on a machine with network)"
    return None


def definitions(extra: Sequence[str] = ()) -> dict[str, Any]:
    """The definition of every metric reported (written into every metrics record)."""
    keys = ["tokenisation", "bleu", "sentence_bleu4", "imageclef_bleu", "rouge", "cider_d", *extra]
    return {k: DEFINITIONS[k] for k in keys if k in DEFINITIONS}
