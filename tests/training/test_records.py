"""ROCO's two public layouts, manifests, and the file check that drops bad rows."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from medblip_dicom.training.records import DataLayoutError, detect_layout, load_records
from medblip_dicom.training.validation import validate_records, write_validation_report


class TestLayouts:
    def test_original_layout_with_pmc_names(self, synthetic_root):
        assert detect_layout(synthetic_root)[0] == "roco"
        records = load_records(synthetic_root, "train")
        assert len(records) == 480
        assert all(r.image.exists() for r in records)
        assert any(r.image.name.startswith("PMC") for r in records)  # found via licences.txt
        assert records[0].id == "ROCO_00001" and not records[0].caption.startswith(" ")
        assert load_records(synthetic_root / "data", "val") == load_records(synthetic_root, "validation")

    def test_kaggle_layout_both_csv_places(self, kaggle_root):
        assert detect_layout(kaggle_root)[0] == "kaggle"
        inside = load_records(kaggle_root, "train")
        assert len(inside) == 24 and all(r.image.exists() for r in inside)
        # the alternative placement: all_data/<split>/radiology<split>data.csv
        split_dir = kaggle_root / "all_data" / "test"
        shutil.move(split_dir / "radiology" / "testdata.csv", split_dir / "radiologytestdata.csv")
        beside = load_records(kaggle_root, "test")
        assert len(beside) == 8 and all(r.image.exists() for r in beside)

    def test_non_radiology_subset_on_request(self, synthetic_root):
        with pytest.raises(DataLayoutError, match="non-radiology"):
            load_records(synthetic_root, "train", subset="non-radiology")

    def test_unknown_folder(self, tmp_path):
        with pytest.raises(DataLayoutError, match="no ROCO data found"):
            load_records(tmp_path)

    def test_manifests_csv_and_jsonl_with_dicom(self, tmp_path, td):
        shutil.copy(td("CT_small.dcm"), tmp_path / "ct.dcm")
        with (tmp_path / "pairs.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "caption"])
            writer.writerow(["ct.dcm", "Axial CT slice."])
        (tmp_path / "pairs.jsonl").write_text(json.dumps({"id": "a", "image_path": str(tmp_path / "ct.dcm"),
                                                          "caption": "Axial CT slice."}) + "\n")
        for name in ("pairs.csv", "pairs.jsonl"):
            (record,) = load_records(tmp_path / name)
            assert record.image == tmp_path / "ct.dcm" and record.caption == "Axial CT slice."
        report = validate_records(load_records(tmp_path / "pairs.csv"))
        assert report.counts["kept"] == 1


class TestValidation:
    def test_bad_rows_dropped_with_reasons(self, synthetic_root, tmp_path, td):
        records = load_records(synthetic_root, "validation")[:6]
        from medblip_dicom.training.records import Record

        good = records[0].image.read_bytes()
        (tmp_path / "zero.jpg").write_bytes(b"")
        (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
        (tmp_path / "noise.jpg").write_bytes(b"\x13\x37" * 500)
        (tmp_path / "cut.dcm").write_bytes(Path(td("CT_small.dcm")).read_bytes()[:20000])
        bad = [
            Record("m", tmp_path / "missing.jpg", "a caption"),
            Record("z", tmp_path / "zero.jpg", "a caption"),
            Record("t", tmp_path / "cut.jpg", "a caption"),
            Record("u", tmp_path / "noise.jpg", "a caption"),
            Record("e", records[1].image, "   "),
            Record("d", tmp_path / "cut.dcm", "a caption"),
        ]
        report = validate_records(records + bad, workers=4)
        assert [r.id for r in report.kept] == [r.id for r in records]
        reasons = {record.id: reason for record, reason, _ in report.dropped}
        assert reasons == {"m": "missing", "z": "zero_bytes", "t": "truncated", "u": "undecodable",
                           "e": "empty_caption", "d": "truncated"}
        counts_file, dropped_file = write_validation_report(report, tmp_path / "report", "validation")
        counts = json.loads(counts_file.read_text())
        assert counts["kept"] == 6 and counts["dropped"] == 6 and counts["truncated"] == 2
        rows = list(csv.DictReader(dropped_file.open()))
        assert {r["id"] for r in rows} == set(reasons) and all(r["detail"] for r in rows)
