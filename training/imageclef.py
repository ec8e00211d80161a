"""ImageCLEFmedical Caption-style BLEU: the challenge's preprocessing, then BLEU per image, averaged.

The challenge's evaluation script (caption prediction, 2017-2022) lower-cases both captions,
removes punctuation (Python's ``string.punctuation``), tokenises with NLTK's ``word_tokenize``,
removes NLTK's English stop words, stems with NLTK's English Snowball stemmer, then scores each
image with ``sentence_bleu([reference], candidate)`` (uniform 1..4-gram weights, no smoothing;
1.0 when both are empty) and averages over the test set; later editions also replace numbers by
the word ``number``. Here, exactly:

1. lower-case;
2. remove every character of ``string.punctuation`` (so ``T2-weighted`` becomes ``t2weighted`` and
   ``3.5`` becomes ``35``, as in the challenge);
3. split on white space (the challenge's ``word_tokenize`` needs NLTK's punkt data, which cannot be
   downloaded here; after step 2 the two differ only on rare characters such as "×" or "°");
4. replace each token made only of digits by ``number``;
5. remove the stop words of :data:`STOP_WORDS`: NLTK's English list (179 words, as shipped with
   NLTK 3.5 and later), copied here so that nothing is downloaded;
6. stem with NLTK's ``SnowballStemmer("english")`` (code only, no data);
7. per image ``sentence_bleu([reference], candidate)`` with NLTK's defaults (uniform weights up to
   4-grams, ``SmoothingFunction().method0``); both empty: 1.0; the mean over all images.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from functools import lru_cache

#: NLTK's English stop words (``nltk.corpus.stopwords.words("english")``, NLTK 3.5 and later).
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him
his himself she she's her hers herself it it's its itself they them their theirs themselves what which who
whom this that that'll these those am is are was were be been being have has had having do does did doing a
an the and but if or because as until while of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here there when
where why how all any both each few more most other some such no nor not only own same so than too very s t
can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't
doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't
shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split())

DEFINITION = ("ImageCLEF-style BLEU: lower-case; string.punctuation removed; white-space split; all-digit "
              "tokens -> 'number'; NLTK English stop words (179, shipped) removed; NLTK Snowball English "
              "stemmer; per-image NLTK sentence_bleu (uniform 1..4-gram weights, no smoothing; both empty = 1), "
              "averaged")

_PUNCTUATION = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=1)
def _stemmer():  # noqa: ANN202 - nltk is imported lazily
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")


def preprocess(caption: str) -> list[str]:
    """The tokens ImageCLEF-style BLEU compares (see the module docstring, steps 1-6)."""
    stem = _stemmer().stem
    tokens = caption.lower().translate(_PUNCTUATION).split()
    tokens = ["number" if t.isdigit() else t for t in tokens]
    return [stem(t) for t in tokens if t not in STOP_WORDS]


def imageclef_bleu(reference: str, hypothesis: str) -> float:
    """One image's score (step 7)."""
    import warnings

    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    ref, hyp = preprocess(reference), preprocess(hypothesis)
    if not ref and not hyp:
        return 1.0
    if not ref or not hyp:
        return 0.0
    with warnings.catch_warnings():  # "0 counts of n-gram overlaps": expected for short captions
        warnings.simplefilter("ignore", UserWarning)
        return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method0))


def imageclef_bleu_scores(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """Per-image ImageCLEF-style BLEU for paired captions."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return [imageclef_bleu(r, h) for r, h in zip(references, hypotheses)]
