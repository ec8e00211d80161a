"""Selection as a clinic meets it: one SR per series through `medblip caption`, the watch folder
and the node, rules that skip and force, late instances, and a SIGKILL while a series waits."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import generate_uid

from medblip_dicom.apps.main import main
from medblip_dicom.integrations.spool import JobState
from medblip_dicom.report_view import CaptionReport
from medblip_dicom.selection import InstanceFacts, representative
from tests.support.checks import expected_sr_uid
from tests.support.dicom import ct_series, reissued
from tests.support.env import dcmtk_env, free_port, run_tool, wait_for
from tests.support.privacy import PATIENT_ID, PATIENT_NAME
from tests.support.services import make_config, service_config

REPRESENTATIVE = {"per_series": "representative", "series_quiet_s": 1.0}


def real_localizer() -> str:
    """A real CT localizer from pydicom's test data (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)."""
    (path,) = [f for f in get_testdata_files() if os.path.basename(f) == "6924"]
    return path


def clinic_study(td, folder: Path, slices: int = 7) -> dict[str, list[Path]]:
    """One study of the test patient as a clinic sends it: a CT series (shuffled, numbers disagreeing
    with positions), a localizer series, a CR and an SR (like a dose report)."""
    study = generate_uid()
    patient = {"StudyInstanceUID": study, "PatientName": PATIENT_NAME, "PatientID": PATIENT_ID}
    ct = ct_series(td, folder / "ct", slices, shuffle=True, study_uid=study)
    localizer = reissued(lambda _: real_localizer(), "loc", folder / "loc", **patient)
    cr = reissued(td, "RG1_UNCI.dcm", folder / "cr", **patient)
    sr = reissued(td, "test-SR.dcm", folder / "sr", **patient)
    return {"ct": ct, "localizer": [localizer], "cr": [cr], "sr": [sr]}


def middle_slice(paths: list[Path]) -> str:
    return representative([InstanceFacts.from_dataset(pydicom.dcmread(p, stop_before_pixels=True))
                           for p in paths]).sop_instance_uid


def reports(folder: Path) -> dict[str, CaptionReport]:
    """{source SOPInstanceUID: report} of every SR in a folder."""
    found = [CaptionReport.from_file(p) for p in sorted(folder.glob("*.dcm"))]
    return {r.source_sop_instance_uid: r for r in found}


class TestCaptionCommand:
    def test_a_folder_gets_one_sr_per_series_and_the_middle_slice_speaks_for_the_ct(
            self, td, tmp_path, tiny_model_dir, capsys, validate_sr):
        study = clinic_study(td, tmp_path / "in")
        out = tmp_path / "out"
        rc = main(["caption", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(out), "-q"])
        err = capsys.readouterr().err
        assert rc == 0, err
        found = reports(out)
        mid = middle_slice(study["ct"])
        cr_uid = str(pydicom.dcmread(study["cr"][0], stop_before_pixels=True).SOPInstanceUID)
        assert set(found) == {mid, cr_uid}  # one per series; the localizer and the SR are skipped
        assert "7 instances" in found[mid].note
        assert found[cr_uid].note == ""  # a series of one says nothing more
        for path in out.glob("*.dcm"):
            validate_sr(path)
        assert err.count("not the representative of series") == 6
        assert "a localizer or scout" in err and "captioned 2 of 10 files (0 failed, 8 skipped)" in err

    def test_each_and_a_rule_that_forces_localizers(self, td, tmp_path, tiny_model_dir, capsys):
        study = clinic_study(td, tmp_path / "in", slices=3)
        rc = main(["caption", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "each"),
                   "--per-series", "each", "-q"])
        assert rc == 0 and len(list((tmp_path / "each").glob("*.dcm"))) == 4  # 3 CT + CR; localizer skipped
        rules = tmp_path / "rules.toml"
        rules.write_text('[select]\nper_series = "each"\n[[select.rule]]\naction = "caption"\n'
                         'image_type = ["LOCALIZER"]\n[[select.rule]]\naction = "skip"\nmodality = ["CR"]\n'
                         'name = "no radiographs"\n')
        capsys.readouterr()
        rc = main(["caption", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "ruled"),
                   "--select", str(rules), "-q"])
        err = capsys.readouterr().err
        assert rc == 0, err
        found = reports(tmp_path / "ruled")
        localizer = str(pydicom.dcmread(study["localizer"][0], stop_before_pixels=True).SOPInstanceUID)
        assert localizer in found and len(found) == 4  # 3 CT + the forced localizer, no CR
        assert "skipped by selection no radiographs (modality CR)" in err

    @pytest.mark.parametrize("text, key", [
        ('[[select.rule]]\naction = "skip"\nmodalities = ["CT"]\n', "unknown key 'modalities'"),
        ('[[select.rule]]\naction = "skip"\nseries_description = "[unclosed"\n', "series_description"),
    ])
    def test_a_bad_rule_file_is_refused_before_anything_loads(self, text, key, tmp_path, td, capsys):
        rules = tmp_path / "rules.toml"
        rules.write_text(text)
        assert main(["caption", td("CT_small.dcm"), "--model", str(tmp_path / "no-model"), "--select",
                     str(rules)]) == 2
        err = capsys.readouterr().err.strip()
        assert key in err and str(rules) in err and err.count("\n") == 0


class TestServices:
    def test_the_watch_folder_waits_for_the_series_then_captions_its_middle(self, td, tmp_path, run_service):
        study = clinic_study(td, tmp_path / "staging")
        inbox, out = tmp_path / "inbox", tmp_path / "out"
        inbox.mkdir()
        config = make_config(tmp_path, watch={"inbox": str(inbox), "settle_s": 0.1, "poll_interval_s": 0.1},
                             output={"dir": str(out)}, select=REPRESENTATIVE)
        service = run_service(config, watch=True)
        wait_for(service.watcher.ready.is_set, 10, "the watcher")
        mid = middle_slice(study["ct"])
        everything = [p for paths in study.values() for p in paths]
        for i, path in enumerate(everything):
            os.rename(path, inbox / f"{i:02d}-{path.name}")
        wait_for(lambda: len(list(out.glob("*.dcm"))) == 2 and service.spool.summary().queue_depth == 0, 60,
                 "one SR for the CT series and one for the CR")
        assert mid in reports(out)
        summary = service.spool.summary()
        assert summary.skipped_by == {"NotRepresentative": 6, "Localizer": 1, "NotAnImageError": 1}
        assert len(list((inbox / "done").glob("*.dcm"))) == 10
        reason = next((inbox / "done").glob("*.reason.txt")).read_text()
        assert "error: " in reason and "message: " in reason

    def test_two_series_interleaved_over_two_associations_then_a_late_instance(
            self, td, tmp_path, tool, run_service):
        dcmsend = tool("dcmsend")
        study = generate_uid()
        a = ct_series(td, tmp_path / "a", 6, shuffle=True, study_uid=study, seed=1)
        b = ct_series(td, tmp_path / "b", 5, shuffle=True, study_uid=study, seed=2)
        out = tmp_path / "out"
        config = make_config(tmp_path, node={"port": free_port()}, output={"dir": str(out)},
                             select={"per_series": "representative", "series_quiet_s": 2.0})
        service = run_service(config, node=True)
        halves = ([*a[0::2], *b[1::2]], [*b[0::2], *a[1::2]])  # each association carries both series
        senders = [subprocess.Popen([dcmsend, "127.0.0.1", str(config.node.port), "-aec", "MEDBLIP",
                                     *map(str, half)], env=dcmtk_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT) for half in halves]
        for proc in senders:
            assert proc.wait(60) == 0, proc.stdout.read().decode()
            proc.stdout.close()
        wait_for(lambda: service.spool.count(JobState.DELIVERED) == 2 and service.spool.summary().queue_depth == 0,
                 60, "one report per series")
        assert set(reports(out)) == {middle_slice(a), middle_slice(b)}

        late = ct_series(td, tmp_path / "late", 1, study_uid=study)[0]
        ds = pydicom.dcmread(late)
        ds.SeriesInstanceUID = pydicom.dcmread(a[0], stop_before_pixels=True).SeriesInstanceUID
        ds.save_as(late, enforce_file_format=True)
        assert run_tool([dcmsend, "127.0.0.1", str(config.node.port), "-aec", "MEDBLIP", str(late)]).returncode == 0
        wait_for(lambda: service.spool.summary().skipped_by.get("LateInstance") == 1, 30, "the late instance")
        job = [j for j in service.spool.jobs() if j.error_class == "LateInstance"][0]
        assert middle_slice(a) in job.reason and "already has its AI report" in job.reason
        assert len(list(out.glob("*.dcm"))) == 2  # no second report for series a


def test_a_sigkill_while_the_series_waits_ends_with_the_same_single_sr(td, tmp_path, tiny_model_dir, services,
                                                                        weights_sha256):
    slices = ct_series(td, tmp_path / "staging", 5, shuffle=True)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    config = service_config(tmp_path, tiny_model_dir, watch={"inbox": str(inbox), "settle_s": 0.1},
                            output={"dir": str(out)}, select={"per_series": "representative", "series_quiet_s": 4.0})
    service = services("watch", config)
    service.start().wait_ready("watching")
    inbox.mkdir(exist_ok=True)
    for path in slices:
        os.rename(path, inbox / path.name)
    spool = tmp_path / "spool"

    def all_held() -> bool:
        from tests.support.journal import journal_rows

        rows = journal_rows(spool, "state, selected")
        return len(rows) == 5 and all(r["state"] == "received" and not r["selected"] for r in rows)

    wait_for(all_held, 30, "every slice taken and held for its series")
    service.kill()  # mid-wait: nothing decided yet
    service.start().wait_ready("watching")
    wait_for(lambda: len(list(out.glob("*.dcm"))) == 1, 60, "the series' one report")
    assert service.stop() == 0
    (sr,) = out.glob("*.dcm")
    mid = middle_slice([inbox / "done" / p.name for p in slices])
    assert sr.name == f"{expected_sr_uid(mid, weights_sha256)}.dcm"
    assert CaptionReport.from_file(sr).source_sop_instance_uid == mid


def test_a_sigkill_after_the_decision_before_the_report_ends_with_the_same_single_sr(
        td, tmp_path, tiny_model_dir, services, weights_sha256):
    """The decision is one transaction: killed between it and the caption, the restart captions the
    same representative, and the skipped slices stay skipped, once."""
    from tests.support.journal import journal_rows

    slices = ct_series(td, tmp_path / "staging", 5, shuffle=True)
    inbox, out, spool = tmp_path / "inbox", tmp_path / "out", tmp_path / "spool"
    config = service_config(tmp_path, tiny_model_dir, watch={"inbox": str(inbox), "settle_s": 0.1},
                            output={"dir": str(out)}, worker={"max_wait_s": 6.0},  # a lone job waits 6 s
                            select={"per_series": "representative", "series_quiet_s": 0.5})
    service = services("watch", config)
    service.start().wait_ready("watching")
    inbox.mkdir(exist_ok=True)
    for path in slices:
        os.rename(path, inbox / path.name)

    def decided_not_reported() -> bool:
        rows = journal_rows(spool, "state, representative")
        return any(r["representative"] and r["state"] == "received" for r in rows)

    wait_for(decided_not_reported, 30, "the series decided, its representative not yet claimed", interval_s=0.01)
    service.kill()
    assert not list(out.glob("*.dcm"))
    service.start().wait_ready("watching")
    wait_for(lambda: len(list(out.glob("*.dcm"))) == 1, 60, "the series' one report")
    assert service.stop() == 0
    rows = journal_rows(spool, "state, error_class, representative")
    assert sorted((r["state"], r["error_class"]) for r in rows) == \
        [("delivered", None)] + [("skipped", "NotRepresentative")] * 4
    (sr,) = out.glob("*.dcm")
    mid = middle_slice([inbox / "done" / p.name for p in slices])
    assert sr.name == f"{expected_sr_uid(mid, weights_sha256)}.dcm"
