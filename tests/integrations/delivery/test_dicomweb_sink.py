"""The STOW-RS sink: SRs reach Orthanc's DICOMweb plugin, wait while it is down, and a refusal
(4xx, FailedSOPSequence) fails the job with the archive's reason; 503 + Retry-After is honoured."""

from __future__ import annotations

import time

import pydicom
import pytest
from tests.support.fake_stow import Answer, fake_stow, stow_body
from tests.support.dicom import reissued
from tests.support.env import wait_for
from tests.support.services import make_config

from medblip_dicom.integrations.config.file import ConfigError, load_config
from medblip_dicom.integrations.delivery.sinks.dicomweb import parse_retry_after
from medblip_dicom.integrations.spool import JobState


def _state(service, job_id):
    return service.spool.job(job_id).state


def test_srs_of_a_study_go_to_orthanc_by_stow_and_wait_while_it_is_down(tmp_path, td, orthanc_factory, run_service):
    pacs = orthanc_factory(dicomweb=True)
    pacs.start()
    config = make_config(tmp_path, forward={"dicomweb_url": pacs.dicomweb_url})
    service = run_service(config)
    first = reissued(td, "CT_small.dcm", tmp_path / "in")
    job1 = service.spool.add_file(first, origin="test", name=first.name).job_id
    wait_for(lambda: _state(service, job1) is JobState.DELIVERED, 60, "the first SR delivered by STOW-RS")
    study_uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
    (sr,) = pacs.instances(study_uid, "SR")
    assert sr.SOPInstanceUID == service.spool.job(job1).sr_sop_instance_uid

    pacs.stop()  # the archive goes away while the next report waits
    second = reissued(td, "CT_small.dcm", tmp_path / "in")
    job2 = service.spool.add_file(second, origin="test", name=second.name).job_id
    wait_for(lambda: service.spool.job(job2).attempts >= 2, 60, "two tries while Orthanc is down")
    job = service.spool.job(job2)
    assert job.state is JobState.REPORTED and "cannot be reached" in job.reason
    pacs.start()
    wait_for(lambda: _state(service, job2) is JobState.DELIVERED, 60, "delivery once Orthanc is back")
    assert sorted(s.SOPInstanceUID for s in pacs.instances(study_uid, "SR")) == sorted(
        service.spool.job(j).sr_sop_instance_uid for j in (job1, job2))


def test_a_study_quiet_time_sends_its_srs_in_one_request_with_the_token(tmp_path, td, run_service):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with fake_stow(lambda n, uids: Answer(200, stow_body(uids, {}))) as (url, requests):
        config = make_config(tmp_path, output={"study_quiet_s": 1.0},
                             forward={"dicomweb_url": url, "dicomweb": {"token_file": str(token)}})
        service = run_service(config)
        study = pydicom.uid.generate_uid()
        jobs = [service.spool.add_file(p, origin="test", name=p.name).job_id
                for p in (reissued(td, "CT_small.dcm", tmp_path / "in", StudyInstanceUID=study) for _ in range(3))]
        wait_for(lambda: all(_state(service, j) is JobState.DELIVERED for j in jobs), 60, "the study delivered")
    assert len(requests) == 1
    (request,) = requests
    assert request.path == f"/dicom-web/studies/{study}"
    assert request.headers["Authorization"] == "Bearer s3cret-token"
    assert sorted(request.uids) == sorted(service.spool.job(j).sr_sop_instance_uid for j in jobs)


@pytest.mark.parametrize("answer, words", [
    (lambda uids: Answer(409, stow_body([], {u: 0xC000 for u in uids})), "HTTP 409 Conflict, FailureReason 0xC000"),
    (lambda uids: Answer(202, stow_body([], {u: 0xA900 for u in uids})), "FailureReason 0xA900"),
    (lambda uids: Answer(400), "HTTP 400 Bad Request"),
    (lambda uids: Answer(401), "HTTP 401 Unauthorized"),
])
def test_a_refusal_fails_the_job_with_the_archives_reason_and_is_not_retried(tmp_path, td, run_service, answer,
                                                                            words):
    with fake_stow(lambda n, uids: answer(uids)) as (url, requests):
        service = run_service(make_config(tmp_path, forward={"dicomweb_url": url}))
        source = reissued(td, "MR_small.dcm", tmp_path / "in")
        job_id = service.spool.add_file(source, origin="test", name="mr.dcm").job_id
        wait_for(lambda: _state(service, job_id) is JobState.FAILED, 60, "the job to fail")
        job = service.spool.job(job_id)
        assert words in job.reason and job.error_class == "DestinationRejected"
        time.sleep(1.5)  # several retry intervals (0.2 s doubling to 1 s): a wrong retry would show
        assert len(requests) == 1
    assert words in (tmp_path / "spool" / "failed" / "mr.dcm.reason.txt").read_text()


def test_out_of_resources_and_503_with_retry_after_are_retried(tmp_path, td, run_service):
    def script(n, uids):
        if n == 1:
            return Answer(202, stow_body([], {u: 0xA700 for u in uids}))
        if n == 2:
            return Answer(503, headers={"Retry-After": "2"})
        return Answer(200, stow_body(uids, {}))

    with fake_stow(script) as (url, requests):
        service = run_service(make_config(tmp_path, forward={"dicomweb_url": url}))
        source = reissued(td, "CT_small.dcm", tmp_path / "in")
        job_id = service.spool.add_file(source, origin="test", name=source.name).job_id
        wait_for(lambda: _state(service, job_id) is JobState.DELIVERED, 60, "delivery on the third try")
    assert len(requests) == 3
    # retry_max_s is 1 s in the test config: only Retry-After explains a wait of 2 s.
    assert requests[2].at - requests[1].at >= 1.9


def test_retry_after_as_seconds_or_a_date():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_dicomweb_forward_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"\[forward\] dicomweb_url: .*not an http"):
        load_config(None, {"forward": {"dicomweb_url": "ftp://pacs/dicom-web"}})
    with pytest.raises(ConfigError, match="credentials would travel in clear"):
        load_config(None, {"forward": {"dicomweb_url": "http://pacs.example/dicom-web",
                                       "dicomweb": {"token_env": "PACS_TOKEN"}}})
    with pytest.raises(ConfigError, match="do not belong in the URL"):
        load_config(None, {"forward": {"dicomweb_url": "https://user:pw@pacs.example/dicom-web"}})
    with pytest.raises(ConfigError, match=r"\[forward.dicomweb\] username"):
        load_config(None, {"forward": {"dicomweb_url": "https://pacs.example/dicom-web",
                                       "dicomweb": {"username": "medblip"}}})
    with pytest.raises(ConfigError, match=r"\[forward.dicomweb\] unknown key 'password'"):
        load_config(None, {"forward": {"dicomweb_url": "https://pacs.example/dicom-web",
                                       "dicomweb": {"username": "medblip", "password": "x"}}})
    config = load_config(None, {"forward": {"dicomweb_url": "https://pacs.example/dicom-web/"}})
    assert config.forward.dicomweb_url == "https://pacs.example/dicom-web" and config.has_sink


def test_both_destinations_each_get_the_sr_and_a_refusal_by_either_fails_it(tmp_path, td, orthanc_factory,
                                                                            run_service):
    pacs = orthanc_factory(dicomweb=True)
    pacs.start()
    with fake_stow(lambda n, uids: Answer(200, stow_body(uids, {})) if n == 1 else Answer(403)) as (url, requests):
        config = make_config(tmp_path, forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
                                                "dicomweb_url": url})
        service = run_service(config)
        first = reissued(td, "CT_small.dcm", tmp_path / "in")
        job1 = service.spool.add_file(first, origin="test", name=first.name).job_id
        wait_for(lambda: _state(service, job1) is JobState.DELIVERED, 60, "delivered to both")
        study_uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
        assert [s.SOPInstanceUID for s in pacs.instances(study_uid, "SR")] == requests[0].uids

        second = reissued(td, "MR_small.dcm", tmp_path / "in")
        job2 = service.spool.add_file(second, origin="test", name=second.name).job_id
        wait_for(lambda: _state(service, job2) is JobState.FAILED, 60, "refused by the STOW-RS side")
        assert f"dicomweb destination {url} refused" in service.spool.job(job2).reason
        assert "HTTP 403 Forbidden" in service.spool.job(job2).reason


def test_the_forward_dicomweb_flag_sets_the_stow_destination():
    from medblip_dicom.apps.main import build_parser
    from medblip_dicom.apps.watch_node import _overrides

    for command in ("watch", "node"):
        args = build_parser().parse_args([command, "--forward-dicomweb", "https://pacs.example/dicom-web/"])
        config = load_config(None, _overrides(args))
        assert config.forward.dicomweb_url == "https://pacs.example/dicom-web" and config.forward.destination is None
