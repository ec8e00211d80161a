"""Forwarding reports to a destination: retries while it is down, permanent refusals, TCP_NODELAY,
and study grouping with a quiet time."""

from __future__ import annotations

import socket
import time

import pydicom
from tests.support.dicom import reissued
from tests.support.env import free_port, wait_for
from tests.support.services import make_config, pynetdicom_scp
from pynetdicom.sop_class import ComprehensiveSRStorage

from medblip_dicom.integrations.config.file import Destination
from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient
from medblip_dicom.integrations.spool import JobState


def test_reports_wait_while_orthanc_is_down_then_arrive(tmp_path, td, orthanc_factory, run_service):
    pacs = orthanc_factory()  # ports reserved, not started yet: the destination is down
    config = make_config(tmp_path, forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"})
    service = run_service(config)
    source = reissued(td, "CT_small.dcm", tmp_path / "in")
    admission = service.spool.add_file(source, origin="test", name=source.name)

    def retried() -> bool:
        job = service.spool.job(admission.job_id)
        return job.state is JobState.REPORTED and job.attempts >= 2
    wait_for(retried, 30, "the report to be tried twice while Orthanc is down")
    job = service.spool.job(admission.job_id)
    assert "cannot be reached" in job.reason

    pacs.start()
    wait_for(lambda: service.spool.job(admission.job_id).state is JobState.DELIVERED, 30,
             "delivery once Orthanc is up")
    study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    (sr,) = pacs.instances(study_uid, "SR")
    assert sr.SOPInstanceUID == service.spool.job(admission.job_id).sr_sop_instance_uid


def test_permanent_refusal_fails_the_job_without_retrying(tmp_path, td, run_service):
    def refuse(event):
        return 0xA900  # data set does not match SOP class

    with pynetdicom_scp(refuse) as (port, received):
        config = make_config(tmp_path, forward={"destination": f"REJECTOR@127.0.0.1:{port}"})
        service = run_service(config)
        source = reissued(td, "MR_small.dcm", tmp_path / "in")
        admission = service.spool.add_file(source, origin="test", name="mr.dcm")
        wait_for(lambda: service.spool.job(admission.job_id).state is JobState.FAILED, 30, "the job to fail")
        job = service.spool.job(admission.job_id)
        assert job.dicom_status == 0xA900
        assert "0xA900" in job.reason
        # An observation window longer than several retry intervals (0.2 s doubling to 1 s):
        # a job that was wrongly retried would be sent again within it.
        time.sleep(2.0)
        assert len(received) == 1
        assert service.spool.job(admission.job_id).state is JobState.FAILED
    reason = (tmp_path / "spool" / "failed" / "mr.dcm.reason.txt").read_text()
    assert "dicom_status: 0xA900" in reason
    assert (tmp_path / "spool" / "failed" / "mr.dcm").read_bytes() == source.read_bytes()


def test_out_of_resources_is_retried_until_accepted(tmp_path, td, run_service):
    answers = [0xA700, 0xA700, 0x0000]

    def busy_then_fine(event):
        return answers.pop(0) if answers else 0x0000

    with pynetdicom_scp(busy_then_fine) as (port, received):
        config = make_config(tmp_path, forward={"destination": f"REJECTOR@127.0.0.1:{port}"})
        service = run_service(config)
        source = reissued(td, "CT_small.dcm", tmp_path / "in")
        admission = service.spool.add_file(source, origin="test", name="ct.dcm")
        wait_for(lambda: service.spool.job(admission.job_id).state is JobState.DELIVERED, 30, "delivery")
        assert len(received) == 3
        assert service.spool.job(admission.job_id).attempts == 2


def test_forward_socket_has_tcp_nodelay(tmp_path):
    with pynetdicom_scp(lambda event: 0x0000, ae_title="PACS") as (port, _):
        client = ForwardClient(Destination("PACS", "127.0.0.1", port), calling_ae_title="MEDBLIP")
        assoc = client.associate()
        try:
            sock = assoc.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert any(cx.abstract_syntax == ComprehensiveSRStorage for cx in assoc.accepted_contexts)
        finally:
            assoc.release()


def test_destination_that_refuses_connections_raises_unavailable():
    from medblip_dicom.integrations.delivery.sinks.dicom import DestinationUnavailable

    client = ForwardClient(Destination("PACS", "127.0.0.1", free_port()), timeout_s=5)
    try:
        client.send([])
    except DestinationUnavailable as exc:
        assert "PACS@127.0.0.1" in str(exc)
    else:
        raise AssertionError("no error for a destination nobody listens on")


def test_study_quiet_time_holds_reports_then_sends_them_together(tmp_path, td, run_service):
    quiet = 5.0  # longer than captioning one image takes on a loaded 2-core machine: the report is seen held
    out = tmp_path / "out"
    config = make_config(tmp_path, output={"dir": str(out), "study_quiet_s": quiet},
                         worker={"batch_size": 1, "max_wait_s": 0.0})
    service = run_service(config)
    study = pydicom.uid.generate_uid()
    first = reissued(td, "CT_small.dcm", tmp_path / "in", StudyInstanceUID=study)
    second = reissued(td, "MR_small.dcm", tmp_path / "in", StudyInstanceUID=study)
    a = service.spool.add_file(first, origin="test", name="a.dcm")
    wait_for(lambda: service.spool.job(a.job_id).state is JobState.REPORTED, 30, "the first report")
    assert list(out.glob("*.dcm")) == []  # held: the study is not quiet yet
    b = service.spool.add_file(second, origin="test", name="b.dcm")
    wait_for(lambda: service.spool.count(JobState.DELIVERED) == 2, 30, "both reports delivered")
    ja, jb = service.spool.job(a.job_id), service.spool.job(b.job_id)
    last_arrival = max(ja.received_at, jb.received_at)
    assert ja.finished_at >= last_arrival + quiet and jb.finished_at >= last_arrival + quiet
    assert abs(ja.finished_at - jb.finished_at) < 0.5  # sent as one group
    assert len(list(out.glob("*.dcm"))) == 2


def test_forwarding_over_tls_to_a_node_that_requires_client_certificates(tmp_path, td, tool, run_service):
    """Two of our own services: node B (TLS, client certificates required) is A's destination."""
    from tests.support.services import make_certificates

    certs = make_certificates(tmp_path / "certs", tool("openssl"))
    b_out = tmp_path / "b-out"
    receiver = make_config(tmp_path / "b", output={"dir": str(b_out)},
                           node={"ae_title": "RECEIVER", "port": free_port(),
                                 "tls": {"cert": str(certs["server.pem"]), "key": str(certs["server.key"]),
                                         "client_ca": str(certs["ca.pem"])}})
    node_b = run_service(receiver, node=True)
    sender = make_config(tmp_path / "a", forward={
        "destination": f"RECEIVER@127.0.0.1:{receiver.node.port}",
        "tls": {"ca": str(certs["ca.pem"]), "cert": str(certs["client.pem"]), "key": str(certs["client.key"])}})
    a = run_service(sender)
    admission = a.spool.add_file(reissued(td, "CT_small.dcm", tmp_path / "in"), origin="test", name="ct.dcm")
    wait_for(lambda: a.spool.job(admission.job_id).state is JobState.DELIVERED, 30, "delivery over TLS")
    # B received A's SR over TLS and, by the loop guard, did not caption it again.
    wait_for(lambda: node_b.spool.count(JobState.SKIPPED) == 1, 30, "the SR to arrive at B")
    (job,) = node_b.spool.jobs()
    assert job.sop_instance_uid == a.spool.job(admission.job_id).sr_sop_instance_uid
    assert "loop guard" in job.reason
    assert list(b_out.glob("*.dcm")) == []
