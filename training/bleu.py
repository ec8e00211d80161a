"""BLEU, computed the way the README states, with NLTK and a tokenizer that needs no data.

Tokenisation: lower-case, then words are runs of letters and digits, with internal hyphens or
apostrophes kept (``"T2-weighted"`` -> ``t2-weighted``); punctuation is dropped. (NLTK's
``word_tokenize`` needs the punkt data, which cannot be downloaded offline.)

- **Corpus BLEU-1..4**: ``nltk.translate.bleu_score.corpus_bleu`` with uniform weights over 1..n
  grams, one reference per image, no smoothing (the standard corpus metric).
- **Mean sentence BLEU-4** (the original notebook's metric): ``sentence_bleu`` per caption with
  uniform 4-gram weights and ``SmoothingFunction().method1`` (short captions otherwise score 0),
  averaged over the split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")

TOKENISATION = "lower-case; words = [a-z0-9]+ with internal - or ' kept; punctuation dropped"
SMOOTHING = "corpus BLEU: none; sentence BLEU: NLTK SmoothingFunction().method1"


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (see the module docstring)."""
    return _WORD.findall(text.lower())


def bleu_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 and mean sentence BLEU-4 for paired references and hypotheses."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0, "sentence_bleu4": 0.0}
    refs = [[tokenize(r)] for r in references]
    hyps = [tokenize(h) for h in hypotheses]
    scores = {}
    for n in range(1, 5):
        weights = tuple([1.0 / n] * n)
        scores[f"bleu{n}"] = float(corpus_bleu(refs, hyps, weights=weights))
    sentence = [_sentence(r, h) for r, h in zip(refs, hyps)]
    scores["sentence_bleu4"] = float(sum(sentence) / len(sentence))
    return scores


def sentence_bleu4(reference: str, hypothesis: str) -> float:
    """One caption's sentence BLEU-4 (the notebook's metric, see the module docstring)."""
    return _sentence([tokenize(reference)], tokenize(hypothesis))


def _sentence(refs: list[list[str]], hyp: list[str]) -> float:
    return float(sentence_bleu(refs, hyp, smoothing_function=SmoothingFunction().method1)) if hyp else 0.0
