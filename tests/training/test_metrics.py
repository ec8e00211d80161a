"""The caption metrics against independent computations, the modality rule on real ROCO captions,
the paired bootstrap, and `medblip evaluate` writing and comparing runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medblip_dicom.apps.main import main
from medblip_dicom.training.bleu import tokenize
from medblip_dicom.training.caption_metrics import cider_d, per_image_scores, run_metrics
from medblip_dicom.training.compare import bleu_statistics, compare_runs, corpus_bleu4
from medblip_dicom.training.demo_model import roco_captions
from medblip_dicom.training.imageclef import STOP_WORDS, imageclef_bleu, preprocess
from medblip_dicom.training.modality import modality_from_caption, modality_of

REFS = ["Axial CT of the chest showing a 3 cm mass in the right upper lobe.",
        "Chest radiograph with a left pleural effusion.",
        "T2-weighted MRI of the brain showing a cystic lesion.",
        "Abdominal ultrasound shows gallstones."]
HYPS = ["Axial CT of the chest showing a mass in the right lobe.",
        "Chest x-ray showing pleural effusion on the left.",
        "Brain MRI with a lesion.",
        "Ultrasound of the abdomen showing gallstones."]


class TestImageCLEF:
    def test_preprocessing_on_hand_made_captions(self):
        assert preprocess("The CT (axial) shows 2 nodules, 3.5 cm, in the T2-weighted view!") == \
            ["ct", "axial", "show", "number", "nodul", "number", "cm", "t2weight", "view"]
        assert preprocess("It is what it is.") == []  # stop words only
        assert len(STOP_WORDS) == 179 and {"the", "of", "wouldn't", "ain"} <= STOP_WORDS

    def test_per_image_bleu_equals_nltk_on_the_preprocessed_tokens(self):
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        for ref, hyp in zip(REFS, HYPS):
            expected = sentence_bleu([preprocess(ref)], preprocess(hyp), smoothing_function=SmoothingFunction().method0)
            assert imageclef_bleu(ref, hyp) == pytest.approx(expected)
        assert imageclef_bleu("The of.", "A an.") == 1.0  # both empty after preprocessing
        assert imageclef_bleu(REFS[0], REFS[0]) == pytest.approx(1.0)


class TestScores:
    def test_rouge_and_cider_equal_their_packages_called_directly(self):
        from pycocoevalcap.cider.cider import Cider
        from rouge_score import rouge_scorer

        scores = per_image_scores(REFS, HYPS)
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        for i, (ref, hyp) in enumerate(zip(REFS, HYPS)):
            direct = scorer.score(ref, hyp)
            assert [scores[k][i] for k in ("rouge1", "rouge2", "rougeL")] == \
                pytest.approx([direct[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")])
        corpus, per_image = Cider().compute_score({i: [" ".join(tokenize(r))] for i, r in enumerate(REFS)},
                                                  {i: [" ".join(tokenize(h))] for i, h in enumerate(HYPS)})
        assert scores["cider_d"] == pytest.approx(list(per_image))
        assert cider_d(REFS, HYPS)[0] == pytest.approx(corpus)
        assert run_metrics(REFS, HYPS, scores)["cider_d"] == pytest.approx(corpus)

    def test_corpus_bleu_from_statistics_equals_nltk(self):
        from nltk.translate.bleu_score import corpus_bleu

        expected = corpus_bleu([[tokenize(r)] for r in REFS], [tokenize(h) for h in HYPS])
        assert corpus_bleu4(bleu_statistics(REFS, HYPS)) == pytest.approx(expected)
        assert run_metrics(REFS, HYPS)["bleu4"] == pytest.approx(expected)


class TestModality:
    #: Real ROCO captions (shipped in training/roco_captions, the same rows as ../shared/data) and their group.
    LABELLED = {
        "Brain MRI showing multiple septic emboli.": "MRI",
        "Chest radiograph in a 10-year-old female with sarcoidosis showing hilar adenopathy.": "X-ray",
        "CT on admission. The white arrows show the hypodensities seen medial in the thalamus bilaterally.": "CT",
        "Native computed tomography scan of the brain. Slight hypodensity in the basal ganglia mainly on the left "
        "side (arrow) can be seen (post-ischemic lesions).": "CT",
        "Cavography in a patient with Budd Chiari syndrome. Note that the right hepatic vein was almost completely "
        "occluded (arrow).": "angiography",
        "This is a picture of renal ultrasound. It shows echo-dense area in the renal area, suggestive of a renal "
        "tumour.": "ultrasound",
        "Fluoroscopic image of epidural contrast injected through left L5-S1 foramen.": "X-ray",
        "Widened esophagus.": "other",
    }

    def test_the_rule_on_real_roco_captions(self):
        captions = roco_captions()
        for caption, group in self.LABELLED.items():
            matching = [c for c in captions if c.startswith(caption[:40])]
            assert matching, f"not a ROCO caption: {caption[:40]}"
            assert modality_from_caption(matching[0]) == group, matching[0]
        groups = [modality_from_caption(c) for c in captions]
        counts = {g: groups.count(g) for g in set(groups)}
        assert counts["CT"] > counts["MRI"] > counts["ultrasound"] > counts["PET/nuclear"] > 0
        assert counts["other"] < len(captions) / 3

    def test_pet_ct_is_pet_and_ct_angiography_is_ct(self):
        assert modality_from_caption("FDG PET-CT of the thorax") == "PET/nuclear"
        assert modality_from_caption("CT angiography of the aorta") == "CT"
        assert modality_from_caption("Digital subtraction angiography") == "angiography"

    def test_dicom_rows_use_the_modality_attribute(self, td):
        assert modality_of(td("CT_small.dcm"), "a chest radiograph") == ("CT", "dicom")
        assert modality_of(td("RG1_UNCI.dcm"), "CT") == ("X-ray", "dicom")
        assert modality_of(None, "MR of the knee") == ("MRI", "caption")


class TestCompare:
    def rows(self, hyps):
        return [(str(i), r, h) for i, (r, h) in enumerate(zip(REFS * 10, hyps))]

    def test_a_run_against_itself_differs_by_nothing(self):
        run = self.rows(HYPS * 10)
        result = compare_runs(run, run, resamples=200, seed=3)
        for m in result["metrics"].values():
            assert m["difference"] == 0 and m["ci95"][0] <= 0 <= m["ci95"][1] and not m["b_better"]

    def test_the_same_seed_gives_the_same_interval_and_a_better_run_is_found(self):
        worse = self.rows(["a caption of something"] * 40)
        better = self.rows(HYPS * 10)
        first = compare_runs(worse, better, resamples=300, seed=7)
        again = compare_runs(worse, better, resamples=300, seed=7)
        other = compare_runs(worse, better, resamples=300, seed=8)
        assert first["metrics"] == again["metrics"]
        assert first["metrics"]["rougeL"]["ci95"] != other["metrics"]["rougeL"]["ci95"]
        assert all(m["b_better"] for m in first["metrics"].values())
        assert compare_runs(better, worse, resamples=300, seed=7)["metrics"]["bleu4"]["b_worse"]

    def test_runs_on_other_images_or_references_are_refused(self):
        from medblip_dicom.training.compare import CompareError

        run = self.rows(HYPS * 10)
        with pytest.raises(CompareError, match="same images"):
            compare_runs(run, run[:-1])
        changed = [(i, r + " x", h) for i, r, h in run]
        with pytest.raises(CompareError, match="different references"):
            compare_runs(run, changed)


def test_evaluate_writes_scores_breakdown_plot_and_compares(tiny_model_dir, td, tmp_path, capsys):
    manifest = tmp_path / "pairs.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        for name, caption in (("CT_small.dcm", "Axial CT of the abdomen."), ("MR_small.dcm", "MRI of the knee."),
                              ("RG1_UNCI.dcm", "Chest radiograph, no acute findings.")):
            writer.writerow([td(name), caption])
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(manifest), "--out", str(out),
               "--device", "cpu", "--metrics", "meteor,bertscore", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_modality"]) == {"CT", "MRI", "X-ray"}
    assert all(v["count"] == 1 for v in metrics["by_modality"].values())
    assert {"bleu4", "rouge1", "rouge2", "rougeL", "cider_d", "imageclef_bleu", "sentence_bleu4"} <= set(metrics)
    assert "rouge-score" in metrics["definitions"]["rouge"] and "Snowball" in metrics["definitions"]["imageclef_bleu"]
    assert "WordNet" in metrics["not_computed"]["meteor"] and "bertscore" in metrics["not_computed"]
    import pandas as pd

    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 3 and set(scores["modality_from"]) == {"dicom"}
    assert scores["rougeL"].mean() == pytest.approx(metrics["rougeL"])
    assert (out / "scores.png").stat().st_size > 1000

    other = tmp_path / "other.csv"
    rows = list(csv.reader((out / "predictions.csv").open()))
    with other.open("w", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *[[i, ref, ref] for i, ref, _ in rows[1:]]])  # a perfect run
    rc = main(["evaluate", "--compare", str(out / "predictions.csv"), str(other), "--resamples", "100"])
    text = capsys.readouterr().out
    assert rc == 0 and "rougeL" in text and "95% interval" in text
    result = json.loads((tmp_path / "comparison.json").read_text())
    assert result["metrics"]["rougeL"]["b"] == pytest.approx(1.0)
    assert np.isfinite(result["metrics"]["cider_d"]["difference"])
