"""What a newcomer touches first: previews, show-sr, doctor, quickstart."""

from __future__ import annotations

import socket

import numpy as np
from PIL import Image

from medblip_dicom.apps.main import main


def test_caption_preview_png_shows_image_and_caption(tiny_model_dir, td, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["caption", td("MR_small.dcm"), "--model", str(tiny_model_dir), "--out", str(out), "--preview", "-q"])
    assert rc == 0
    (png,) = out.glob("*.png")
    picture = Image.open(png)
    assert picture.mode == "RGB" and picture.width == 512  # 64 px MR scaled to a readable width
    arr = np.asarray(picture)
    assert picture.height > 512  # the caption band below the square image
    band = arr[512:]
    assert (band == 255).all(axis=2).any()  # white caption text
    assert ((band[..., 0] == 255) & (band[..., 1] == 200) & (band[..., 2] == 0)).any()  # amber notice


def test_show_sr_prints_caption_model_and_reference(tiny_model_dir, td, tmp_path, capsys):
    main(["caption", td("CT_small.dcm"), "--model", str(tiny_model_dir), "--out", str(tmp_path), "-q"])
    _, _, caption = capsys.readouterr().out.strip().split("\t")
    (sr,) = tmp_path.glob("*.dcm")
    rc = main(["show-sr", str(sr)])
    text = capsys.readouterr().out
    assert rc == 0
    assert f"caption      : {caption}" in text
    assert "Device Observer Name" in text and tiny_model_dir.name in text
    assert "INFERRED FROM IMAGE Source image: CT Image Storage" in text
    assert "CompressedSamples" not in text  # no patient names in the printout
    assert main(["show-sr", td("CT_small.dcm")]) == 1  # not an SR: one line, non-zero


def test_doctor_reports_decoders_tools_and_a_busy_port(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["doctor", "--port", str(port)])
    text = capsys.readouterr().out
    assert rc == 1
    assert "  ok  JPEG 2000 Image Compression" in text and "  ok  RLE Lossless" in text
    assert f"FAIL  cannot listen on 127.0.0.1:{port}" in text and "-> stop what uses the port" in text
    assert "[device]" in text and "[models]" in text and "[tools]" in text


def test_every_subcommand_help_has_an_example(capsys):
    import pytest

    for command in ("caption", "train", "evaluate", "watch", "node", "status", "show-sr", "doctor", "quickstart"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "example" in capsys.readouterr().out, command


def test_show_sr_names_the_architecture_and_the_prompt_the_report_records(td, tmp_path, capsys):
    import pydicom

    from medblip_dicom.identity import ModelIdentity
    from medblip_dicom.report import build_report, write_report

    identity = ModelIdentity("tiny-vlm", "v2", "cd" * 32, "test", architecture="Idefics3ForConditionalGeneration",
                             prompt="Name the modality and the body part.")
    sr = write_report(build_report(pydicom.dcmread(td("CT_small.dcm")), "a ct of the head", identity), tmp_path)
    assert main(["show-sr", str(sr)]) == 0
    text = capsys.readouterr().out
    assert "  architecture : Idefics3ForConditionalGeneration\n" in text
    assert "  prompt       : Name the modality and the body part.\n" in text
    blip = ModelIdentity("m", "v", "ef" * 32, "t")
    bare = write_report(build_report(pydicom.dcmread(td("MR_small.dcm")), "an mr", blip), tmp_path)
    assert main(["show-sr", str(bare)]) == 0
    assert "prompt       :" not in capsys.readouterr().out  # nothing is claimed that the report does not record
