"""`medblip quickstart` end to end (fewer epochs than the default, to keep the suite quick)."""

from __future__ import annotations

import pydicom

from medblip_dicom.cli import main


def test_quickstart_trains_captions_real_images_and_caches_the_model(tmp_path, capsys, validate_sr):
    out = tmp_path / "mq"
    assert main(["quickstart", "--out", str(out), "--epochs", "2", "-q"]) == 0
    text = capsys.readouterr().out
    assert "2/4 building a small BLIP" in text
    reports = sorted((out / "reports").glob("*.dcm"))
    assert len(reports) == 3  # chest X-ray, CT, MR
    modalities = set()
    for report in reports:
        validate_sr(report)
        ds = pydicom.dcmread(report)
        modalities.add(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                       .ReferencedSOPSequence[0].ReferencedSOPClassUID.name)
    assert modalities == {"Computed Radiography Image Storage", "CT Image Storage", "MR Image Storage"}
    assert len(list((out / "previews").glob("*.png"))) == 3
    assert text.count("ROOT CONTAINER Diagnostic Imaging Report") == 3
    assert "To use a real BLIP checkpoint instead" in text and str(out) in text

    assert main(["quickstart", "--out", str(out), "-q"]) == 0  # second run: cached model, no training
    again = capsys.readouterr().out
    assert "using the demo model trained earlier" in again and "building a small BLIP" not in again
