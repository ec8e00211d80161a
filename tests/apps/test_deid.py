"""``medblip deid``: keys, flags, folders of DICOM, refusals and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("deid")

from medblip_dicom.apps.main import main  # noqa: E402

from tests.support.dicom import testdata as data_file  # noqa: E402
from tests.support.phi import crafted  # noqa: E402


@pytest.fixture
def key(tmp_path) -> Path:
    assert main(["deid", "--new-key", str(tmp_path / "site.key")]) == 0
    return tmp_path / "site.key"


def test_new_key_refuses_to_overwrite(key, capsys):
    assert main(["deid", "--new-key", str(key)]) == 2
    assert "never overwritten" in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["IN", "OUT"], "--key-file"),
    (["IN", "OUT", "--key-file", "KEY", "--option", "retain-all"], "unknown de-identification option retain-all"),
    (["IN", "OUT", "--key-file", "KEY", "--mask-recipe", "absent.dicom"], "no such mask recipe"),
    (["IN"], "give IN and OUT"),
    (["nowhere", "OUT", "--key-file", "KEY"], "nowhere: no such file or folder"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, key, capsys, argv, said):
    (tmp_path / "in").mkdir()
    names = {"IN": str(tmp_path / "in"), "OUT": str(tmp_path / "out"), "KEY": str(key)}
    assert main(["deid", *(names.get(a, a) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1


def test_a_folder_becomes_images_and_a_card_and_refusals_exit_1(tmp_path, key, capsys):
    crafted(tmp_path / "in" / "a")
    crafted(tmp_path / "in" / "b", BurnedInAnnotation="YES")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    (tmp_path / "in" / "us.dcm").write_bytes(Path(data_file("US1_J2KR.dcm")).read_bytes())
    assert main(["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(key)]) == 1
    out = capsys.readouterr().out
    assert "1 image(s) written" in out and "2 refused for burned-in text" in out and "1 unreadable" in out
    card = json.loads((tmp_path / "out" / "datacard.json").read_text())
    assert card["counts"]["images_written"] == 1 and card["by_modality"] == {"CT": 1}
    assert sorted(card["refusals"]) == ["refused: BurnedInAnnotation is YES (no mask recipe given)",
                                        "refused: modality US, where text is often burned into the pixels "
                                        "(no mask recipe given)"]
    (image,) = (tmp_path / "out" / "images").iterdir()
    assert pydicom.dcmread(image).SOPInstanceUID == image.stem


def test_everything_written_exits_0_and_the_card_names_profile_options_and_libraries(tmp_path, key, capsys):
    crafted(tmp_path / "in")
    assert main(["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(key),
                 "--option", "clean-descriptors", "--option", "retain-modified-dates"]) == 0
    card = json.loads((tmp_path / "out" / "datacard.json").read_text())["deidentification"]
    assert card["profile"] == "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile"
    assert [o["code"] for o in card["options"]] == ["113107 (DCM)", "113105 (DCM)"]
    assert set(card["libraries"]) == {"medblip-dicom", "deid", "pydicom"} and len(card["key_fingerprint"]) == 16
