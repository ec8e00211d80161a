"""Delivery and the review: sources kept while under review, hold_until_signed, the IOCM rejection note."""

from __future__ import annotations

import pydicom

from medblip_dicom.integrations.review.signing import Reviewer

from tests.support.dicom import dciodvfy_errors

ALICE = Reviewer("alice", "Doe^Alice", "Test Hospital")


def test_without_hold_the_ai_report_goes_at_once_and_the_source_stays_for_review(review_spool):
    rs = review_spool(2)
    assert sorted(p.name for p in rs.out.iterdir()) == sorted(f"{u}.dcm" for u in rs.ai_uids)
    assert {j.state.value for j in rs.spool.jobs()} == {"delivered"}
    assert not list((rs.root / "inputs").iterdir())  # the spool's own copy followed the retention rules
    for uid in rs.ai_uids:
        source, ai = rs.store.item_files(rs.store.item(uid))
        assert source.is_file() and ai.is_file()
        assert str(pydicom.dcmread(ai).SOPInstanceUID) == uid


def test_intake_is_idempotent(review_spool):
    rs = review_spool(1)
    job = rs.spool.jobs()[0]
    rs.store.add_item(job.id, rs.sources[0], rs.out / f"{rs.ai_uids[0]}.dcm")
    assert rs.store.counts()["pending"] == 1


def test_hold_until_signed_sends_nothing_until_a_reviewer_signs(review_spool):
    from medblip_dicom.integrations.delivery.loop import Delivery

    rs = review_spool(2, hold=True)
    assert not rs.out.exists() or not list(rs.out.iterdir())
    jobs = rs.spool.jobs()
    assert {(j.state.value, j.error_class) for j in jobs} == {("skipped", "HeldForReview")}
    assert rs.store.counts()["pending"] == 2
    signature = rs.store.sign(rs.ai_uids[0], ALICE, "signed while held")
    Delivery(rs.spool, out_dir=rs.out).deliver_all_once()
    assert [p.name for p in rs.out.iterdir()] == [f"{signature.uid}.dcm"]


def test_a_rejection_note_references_the_ai_report(review_spool):
    from medblip_dicom.integrations.delivery.loop import Delivery

    rs = review_spool(1, rejection_note=True)
    note_uid = rs.store.reject(rs.ai_uids[0], ALICE, "not this patient's anatomy")
    Delivery(rs.spool, out_dir=rs.out).deliver_all_once()
    path = rs.out / f"{note_uid}.dcm"
    ko = pydicom.dcmread(path)
    assert not dciodvfy_errors(path)
    assert ko.Modality == "KO" and ko.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    refs = [r.ReferencedSOPInstanceUID for s in ko.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence]
    assert refs == [rs.ai_uids[0]]
    assert rs.store.recover() == 0  # a committed note is not an orphan


def test_keep_sources_false_removes_the_source_after_the_decision(review_spool):
    rs = review_spool(1)
    rs.store.keep_sources = False
    rs.store.sign(rs.ai_uids[0], ALICE, "done")
    source, ai = rs.store.item_files(rs.store.item(rs.ai_uids[0]))
    assert not source.exists() and ai.exists()


def test_the_services_delivery_gets_the_intake_when_review_is_enabled(tmp_path):
    from medblip_dicom.integrations.service.build import build_delivery
    from medblip_dicom.integrations.config.file import load_config
    from medblip_dicom.integrations.spool import Spool

    config = load_config(None, {"spool": {"dir": str(tmp_path / "spool")}, "output": {"dir": str(tmp_path / "out")},
                                "review": {"enabled": True, "hold_until_signed": True}})
    with Spool(config.spool.dir, min_free_bytes=0) as spool:
        delivery = build_delivery(spool, config)
        assert delivery.review is not None and delivery.review.hold_until_signed
        delivery.review.close()
        plain = load_config(None, {"spool": {"dir": str(tmp_path / "spool")}, "output": {"dir": str(tmp_path / "out")}})
        assert build_delivery(spool, plain).review is None


def test_review_settings_are_checked_naming_the_key(tmp_path):
    import pytest

    from medblip_dicom.integrations.config.file import ConfigError, load_config

    for text, key in (('[review]\nport = 0\n', "[review] port"), ('[review]\nhold_until_signed = "yes"\n',
                                                                     "[review] hold_until_signed"),
                      ('[review.tls]\ncert = "a.pem"\n', "[review.tls] cert/key"),
                      ('[review.tls]\nca = "a.pem"\n', "[review.tls] unknown key 'ca'"),
                      ('[review]\nsession_idle_s = 0\n', "[review] session_idle_s")):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_config(path)
    path.write_text('[review.tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    tls = load_config(path).review.tls
    assert tls.enabled and tls.cert == tmp_path / "c.pem"  # relative to the file


def test_a_report_that_cannot_be_kept_for_review_waits_instead_of_escaping(review_spool, tmp_path):
    from medblip_dicom.integrations.delivery.loop import Delivery
    from medblip_dicom.integrations.review.intake import ReviewIntake
    from medblip_dicom.integrations.spool import JobState

    from tests.support.review import report_into_spool
    from tests.support.dicom import load_template, reissue

    rs = review_spool(0)
    source, _ = reissue(load_template("CT_small.dcm"), tmp_path / "more")
    job_id, uid = report_into_spool(rs.spool, source, "a caption")
    (rs.spool.root / rs.spool.job(job_id).reports[0]).write_bytes(b"not DICOM at all")  # a damaged report
    out = tmp_path / "out-held"
    Delivery(rs.spool, out_dir=out, review=ReviewIntake(rs.spool, hold_until_signed=False, store=rs.store)
             ).deliver_all_once()
    job = rs.spool.job(job_id)
    assert job.state is JobState.REPORTED and "cannot keep the report for review" in job.reason
    assert job.attempts == 1 and (not out.exists() or not list(out.iterdir()))


def test_the_rejection_note_reaches_the_pacs_by_c_store(review_spool, orthanc_factory):
    from medblip_dicom.integrations.config.file import Destination
    from medblip_dicom.integrations.delivery.loop import Delivery
    from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient

    pacs = orthanc_factory()
    pacs.start()
    forward = ForwardClient(Destination(pacs.aet, "127.0.0.1", pacs.dicom_port), timeout_s=10)
    rs = review_spool(1, rejection_note=True, forward=forward)
    study = str(pydicom.dcmread(rs.out / f"{rs.ai_uids[0]}.dcm").StudyInstanceUID)
    note_uid = rs.store.reject(rs.ai_uids[0], ALICE, "wrong side")
    Delivery(rs.spool, out_dir=rs.out, forward=forward).deliver_all_once()
    (ko,) = pacs.instances(study, "KO")
    assert str(ko.SOPInstanceUID) == note_uid
    assert [j.state.value for j in rs.spool.jobs() if j.origin == "review"] == ["delivered"]
