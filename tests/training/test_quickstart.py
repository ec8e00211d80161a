"""`medblip quickstart` end to end (fewer epochs than the default, to keep the suite quick)."""

from __future__ import annotations

import os
import subprocess
import sys

import pydicom

from medblip_dicom.apps.main import main


def test_quickstart_trains_captions_real_images_and_caches_the_model(tmp_path, capsys, validate_sr):
    out = tmp_path / "mq"
    # As a newcomer runs it: a process of its own, everything it prints is read.
    proc = subprocess.run([sys.executable, "-m", "medblip_dicom", "quickstart", "--out", str(out), "--epochs", "2"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    noise = [line for line in proc.stderr.splitlines() if "Removed shared tensor" in line or "WARNING" in line
             or "Traceback" in line]
    assert not noise, "the quickstart printed warnings a newcomer reads as breakage:\n" + "\n".join(noise[:5])
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
