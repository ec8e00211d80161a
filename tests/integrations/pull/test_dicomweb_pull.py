"""``medblip pull``: a study stored into Orthanc is found (QIDO-RS), retrieved (WADO-RS), captioned
and its SRs stored back (STOW-RS); a rerun creates nothing new; --query finds studies; a server that
disappears midway is reported with what was and was not captioned."""

from __future__ import annotations

from functools import partial

import pydicom
import pytest
from pydicom.uid import generate_uid
from tests.support.dicom import reissued
from tests.support.env import free_port
from tests.support.privacy import PATIENT_ID, PATIENT_NAME

from medblip_dicom.apps.main import main


def _study(pacs, td, folder, names, **attrs):
    """Upload re-issued copies of `names` into Orthanc as one new study; returns its UID and the SOP UIDs."""
    study = generate_uid()
    uids = []
    for name in names:
        # One patient: Orthanc keys a study by PatientID and StudyInstanceUID together.
        path = reissued(td, name, folder, StudyInstanceUID=study, PatientID=PATIENT_ID, PatientName=PATIENT_NAME,
                        **attrs)
        pacs.post("/instances", path.read_bytes())
        uids.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    return study, uids


def _pull(tiny_model_dir, *args):
    return main(["pull", *args, "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32",
                 "--per-series", "each", "-q"])


@pytest.fixture
def pacs(orthanc_factory):
    server = orthanc_factory(dicomweb=True)
    server.start()
    return server


def test_pull_captions_a_study_and_stores_the_srs_back_a_rerun_creates_nothing(tmp_path, td, pacs, tiny_model_dir,
                                                                               capsys):
    study, uids = _study(pacs, td, tmp_path / "in", ["CT_small.dcm", "MR_small.dcm", "CT_small.dcm"])
    out = tmp_path / "out"
    assert _pull(tiny_model_dir, "--from", pacs.dicomweb_url, "--study", study, "--out", str(out)) == 0
    srs = pacs.instances(study, "SR")
    assert len(srs) == 3
    sources = sorted(str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                         .ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for sr in srs)
    assert sources == sorted(uids)
    assert sorted(p.stem for p in out.glob("*.dcm")) == sorted(str(sr.SOPInstanceUID) for sr in srs)
    assert "3 captioned" in capsys.readouterr().err

    # Again: the same SR UIDs, so Orthanc and the folder hold the same three reports; our SRs in the
    # study are not pulled for captioning.
    assert _pull(tiny_model_dir, "--from", pacs.dicomweb_url, "--study", study, "--out", str(out)) == 0
    assert sorted(s.SOPInstanceUID for s in pacs.instances(study, "SR")) == sorted(s.SOPInstanceUID for s in srs)
    assert len(list(out.glob("*.dcm"))) == 3
    assert "3 captioned" in capsys.readouterr().err


def test_query_captions_every_study_it_finds_and_only_those(tmp_path, td, pacs, tiny_model_dir):
    mr_study, _ = _study(pacs, td, tmp_path / "a", ["MR_small.dcm", "MR_small.dcm"])
    ct_study, _ = _study(pacs, td, tmp_path / "b", ["CT_small.dcm"])
    other_mr, _ = _study(pacs, td, tmp_path / "c", ["MR_small.dcm"])
    assert _pull(tiny_model_dir, "--from", pacs.dicomweb_url, "--query", "ModalitiesInStudy=MR", "--no-stow",
                 "--out", str(tmp_path / "out")) == 0
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 3
    assert pacs.count(mr_study, "SR") == pacs.count(other_mr, "SR") == pacs.count(ct_study, "SR") == 0
    assert _pull(tiny_model_dir, "--from", pacs.dicomweb_url, "--query", "ModalitiesInStudy=CT") == 0
    assert pacs.count(ct_study, "SR") == 1 and pacs.count(mr_study, "SR") == 0


def test_a_server_that_disappears_midway_is_reported(tmp_path, td, pacs, captioner):
    from medblip_dicom.api import caption_dicoms
    from medblip_dicom.integrations.pull.dicomweb import Puller
    from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient
    from medblip_dicom.selection import SelectConfig

    study, uids = _study(pacs, td, tmp_path / "in", ["CT_small.dcm"] * 4)
    seen: list[str] = []

    def after_each(sop: str) -> None:
        seen.append(sop)
        if len(seen) == 2:
            pacs.stop()

    caption = partial(caption_dicoms, model=captioner, output_dir=tmp_path / "out",
                      select=SelectConfig(per_series="each"))
    puller = Puller(pacs.dicomweb_url, caption=caption, to=StowClient(pacs.dicomweb_url), on_instance=after_each)
    result = puller.pull(study)
    assert result.found == 4 and not result.complete
    assert sorted(result.retrieved + result.not_retrieved) == sorted(uids) and len(result.not_retrieved) == 2
    assert sorted(result.captioned) == sorted(seen)
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2  # what was captioned is kept
    assert [why for _, why in result.not_stored] and "cannot be reached" in result.not_stored[0][1]
    assert "does not answer" in result.server_error


def test_an_unreachable_server_or_bad_arguments_are_one_line(tmp_path, tiny_model_dir, capsys):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert _pull(tiny_model_dir, "--from", url, "--study", "1.2.3") == 1
    err = capsys.readouterr().err
    assert "does not answer" in err and "Traceback" not in err
    assert _pull(tiny_model_dir, "--from", url, "--query", "ModalitiesInStudy") == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err
    assert _pull(tiny_model_dir, "--from", "ftp://x/y", "--study", "1.2.3") == 2
    assert _pull(tiny_model_dir, "--from", url, "--study", "1.2", "--token-file", str(tmp_path / "nope")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_selection_rules_apply_one_caption_per_series_by_default(tmp_path, td, pacs, tiny_model_dir, capsys):
    study, _ = _study(pacs, td, tmp_path / "in", ["CT_small.dcm"] * 3)  # one series of three
    assert main(["pull", "--from", pacs.dicomweb_url, "--study", study, "--model", str(tiny_model_dir),
                 "--device", "cpu", "--dtype", "float32", "-q"]) == 0
    assert pacs.count(study, "SR") == 1
    assert "1 captioned, 2 skipped" in capsys.readouterr().err


def test_only_what_will_be_captioned_is_retrieved_where_qido_rs_answers_position(tmp_path, td, pacs, captioner):
    from tests.support.pull import archive_study, report_sources

    from medblip_dicom.api import caption_dicoms
    from medblip_dicom.integrations.delivery.sinks.dicomweb import StowClient
    from medblip_dicom.integrations.pull.dicomweb import Puller
    from medblip_dicom.selection import SelectConfig

    study = archive_study(td, tmp_path / "in")
    for path in study.paths:
        pacs.post("/instances", path.read_bytes())
    select = SelectConfig()
    puller = Puller(pacs.dicomweb_url, caption=partial(caption_dicoms, model=captioner, select=select),
                    to=StowClient(pacs.dicomweb_url), select=select)
    result = puller.pull(study.study_uid)
    assert (result.found, len(result.retrieved), set(result.captioned)) == (9, 2, study.captioned)
    assert len(result.skipped) == 7 and result.complete
    assert report_sources(pacs.instances(study.study_uid, "SR")) == study.captioned
