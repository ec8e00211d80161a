"""Collate, train/serve agreement, caption length limit and BLEU checked independently."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pydicom
import torch

from medblip_dicom.training.demo_model import roco_captions
from medblip_dicom.pixels import dataset_to_image
from medblip_dicom.training.bleu import bleu_scores, tokenize
from medblip_dicom.training.data import DEFAULT_MAX_LENGTH, CaptionCollator, CaptionDataset, EpochShuffleSampler
from medblip_dicom.training.records import Record


def test_collate_starts_like_generate_and_masks_padding(captioner):
    tok = captioner.processor.tokenizer
    bos = captioner.model.config.text_config.bos_token_id
    collate = CaptionCollator(tok, bos, max_length=12)
    items = [{"pixel_values": torch.zeros(3, 32, 32), "caption": c}
             for c in ("Axial CT.", "Chest radiograph showing a round opacity in the right upper lobe and more words")]
    batch = collate(items)
    assert batch["input_ids"].shape == (2, 12)  # longest, truncated at max_length
    assert (batch["input_ids"][:, 0] == bos).all()  # generate() starts from [DEC]
    assert batch["input_ids"][1, -1] == tok.sep_token_id  # truncation keeps the end marker
    pad = batch["attention_mask"] == 0
    assert pad[0].any() and (batch["labels"][pad] == -100).all() and (batch["labels"][~pad] >= 0).all()
    short = collate(items[:1])
    assert short["input_ids"].shape[1] == int(items and len(tok("Axial CT.")["input_ids"]))  # no padding to max


def test_training_pixels_equal_inference_pixels(captioner, td):
    path = td("RG1_UNCI.dcm")
    dataset = CaptionDataset([Record("x", __import__("pathlib").Path(path), "chest")], captioner.processor.image_processor)
    trained_on = dataset[0]["pixel_values"]
    served = captioner.preprocess([dataset_to_image(pydicom.dcmread(path))])[0]
    assert torch.equal(trained_on, served)


def test_max_length_covers_95th_percentile_of_roco(captioner):
    tok = captioner.processor.tokenizer
    lengths = np.array([len(tok(c)["input_ids"]) for c in roco_captions()])
    words = np.array([len(c.split()) for c in roco_captions()])
    assert np.percentile(words, 95) >= 40  # ROCO's long tail is real
    assert np.percentile(lengths, 95) <= DEFAULT_MAX_LENGTH


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, 7), EpochShuffleSampler(50, 7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b) and sorted(b) == list(range(50))


def reference_corpus_bleu(refs: list[list[str]], hyps: list[list[str]], n_max: int) -> float:
    """Papineni et al. corpus BLEU written out: clipped n-gram precision, geometric mean, brevity."""
    log_sum = 0.0
    for n in range(1, n_max + 1):
        match = total = 0
        for ref, hyp in zip(refs, hyps):
            h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            match += sum(min(c, r[g]) for g, c in h.items())
            total += max(len(hyp) - n + 1, 1)  # NLTK counts a too-short hypothesis as one miss
        if match == 0:
            return 0.0
        log_sum += math.log(match / total) / n_max
    ref_len, hyp_len = sum(map(len, refs)), sum(map(len, hyps))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_sum)


def test_bleu_matches_an_independent_implementation():
    refs = [c for c in roco_captions()[:60]]
    rng = np.random.default_rng(0)
    hyps = []
    for c in refs:  # damaged copies: dropped and swapped words
        words = c.split()
        keep = [w for w in words if rng.random() > 0.2]
        if len(keep) > 3:
            i = int(rng.integers(0, len(keep) - 1))
            keep[i], keep[i + 1] = keep[i + 1], keep[i]
        hyps.append(" ".join(keep))
    scores = bleu_scores(refs, hyps)
    for n in range(1, 5):
        expected = reference_corpus_bleu([tokenize(r) for r in refs], [tokenize(h) for h in hyps], n)
        assert math.isclose(scores[f"bleu{n}"], expected, rel_tol=1e-9), n
    assert 0 < scores["bleu4"] < scores["bleu1"] < 1
    assert bleu_scores(refs, refs)["bleu4"] == 1.0


def test_tokenisation_is_documented_behaviour():
    assert tokenize("T2-weighted MRI, (arrow).") == ["t2-weighted", "mri", "arrow"]
