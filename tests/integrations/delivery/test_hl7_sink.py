"""The HL7 v2 sink against an MLLP receiver built on another library (hl7apy, parsing strictly as
ORU^R01 v2.5.1): result status per document, escaping, MSH-10, and the ACK rules in a running service
(AA delivered, AE retried, AR failed for good, no ACK and a receiver dying mid-message retried), each
report delivered once across retries and restarts."""

from __future__ import annotations

import time

import pydicom
import pytest

from medblip_dicom.integrations.config.checks import ConfigError
from medblip_dicom.integrations.config.file import load_config
from medblip_dicom.integrations.config.hl7 import Hl7Config
from medblip_dicom.integrations.delivery.sinks.base import DestinationUnavailable
from medblip_dicom.integrations.delivery.sinks.hl7 import Hl7Sink
from medblip_dicom.integrations.delivery.sinks.hl7message import control_id, escape
from medblip_dicom.integrations.spool import JobState

from tests.integrations.delivery.documents import CAPTION, make_documents
from tests.support.dicom import reissued
from tests.support.env import free_port, wait_for
from tests.support.hl7_receiver import Hl7Receiver, unescape
from tests.support.services import make_config


def _sink(port: int, **settings: object) -> Hl7Sink:
    return Hl7Sink(Hl7Config(destination=f"127.0.0.1:{port}", receiving_application="TESTRIS", **settings))


def test_each_version_of_a_report_is_a_strict_oru_r01_with_its_result_status(tmp_path):
    docs = make_documents(tmp_path, AccessionNumber="ACC|42", PatientBirthDate="19700101", PatientSex="F")
    with Hl7Receiver() as receiver:
        paths = [docs.ai, docs.signed, docs.amended, docs.rejection]
        outcomes = _sink(receiver.port).send(paths)
    assert receiver.invalid == []
    assert [o.delivered for o in outcomes] == [True] * 4
    got = receiver.accepted()
    assert [m.result_status for m in got] == ["P", "F", "C", "X"]
    ai_uid = str(pydicom.dcmread(docs.ai).SOPInstanceUID)
    assert [m.report_uid for m in got] == [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert [m.ai_report_uid for m in got[:3]] == [ai_uid] * 3  # every version points at the AI report
    assert got[3].ai_report_uid == str(pydicom.dcmread(docs.rejected_ai).SOPInstanceUID)
    assert got[0].text == CAPTION  # every delimiter and non-ASCII character arrives as it was
    assert got[1].text == "no acute findings | signed"
    assert got[3].text == "Rejected: wrong side & wrong patient?"
    assert [m.control_id for m in got] == [control_id(m.report_uid) for m in got]
    first = got[0]
    source = pydicom.dcmread(docs.ai)
    assert first.field("pid.pid_3").split("^")[0] == source.PatientID
    assert unescape(first.field("pid.pid_5").split("^")[0]) == str(source.PatientName).split("^")[0]
    assert (first.field("pid.pid_7"), first.field("pid.pid_8")) == ("19700101", "F")
    assert unescape(first.field("obr.obr_18")) == "ACC|42"
    assert first.field("obr.obr_32") == "" and got[1].field("obr.obr_32") == "&Doe&Alice"


def test_order_numbers_a_report_records_go_into_orc_and_obr(tmp_path):
    """A report whose Referenced Request Sequence names the order: placer and filler numbers in ORC/OBR-2
    and -3, the requested procedure ID in OBR-19 (a report without one leaves them empty, as above)."""
    from pydicom.dataset import Dataset

    docs = make_documents(tmp_path, AccessionNumber="ACC7")
    ds = pydicom.dcmread(docs.ai)
    request = Dataset()
    request.StudyInstanceUID = ds.StudyInstanceUID
    request.AccessionNumber = "ACC7"
    request.PlacerOrderNumberImagingServiceRequest = "PLACER-1"
    request.FillerOrderNumberImagingServiceRequest = "FILLER^2"
    request.RequestedProcedureID = "RP-3"
    ds.ReferencedRequestSequence = [request]
    ds.save_as(docs.ai, enforce_file_format=True)
    with Hl7Receiver() as receiver:
        assert _sink(receiver.port).send([docs.ai])[0].delivered
    (got,) = receiver.accepted()
    assert (got.field("orc.orc_2"), got.field("obr.obr_2")) == ("PLACER-1", "PLACER-1")
    assert unescape(got.field("orc.orc_3")) == unescape(got.field("obr.obr_3")) == "FILLER^2"
    assert (got.field("obr.obr_18"), got.field("obr.obr_19")) == ("ACC7", "RP-3")


def test_escaping_follows_the_hl7_rules():
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("line\rbreak\ttab") == "line\\X0D\\break\\X09\\tab"
    assert escape("épanchement 无") == "épanchement 无"
    assert unescape(escape(CAPTION)) == CAPTION


def test_the_same_document_is_the_same_message_again(tmp_path):
    docs = make_documents(tmp_path)
    with Hl7Receiver() as receiver:
        sink = _sink(receiver.port)
        sink.send([docs.ai])
        sink.send([docs.ai])
    first, again = receiver.accepted()
    assert first.raw == again.raw and len(first.control_id) == 20


def test_a_receiver_that_cannot_be_reached_raises_unavailable(tmp_path):
    docs = make_documents(tmp_path)
    with pytest.raises(DestinationUnavailable, match="cannot be reached"):
        _sink(free_port(), timeout_s=2).send([docs.ai])


def _service(tmp_path, run_service, port: int, *, timeout_s: float = 2.0, **sections):
    config = make_config(tmp_path, hl7={"destination": f"127.0.0.1:{port}", "timeout_s": timeout_s}, **sections)
    return run_service(config)


def _admit(service, td, tmp_path, name: str = "CT_small.dcm") -> int:
    source = reissued(td, name, tmp_path / "in")
    return service.spool.add_file(source, origin="test", name=source.name).job_id


def test_ae_is_retried_until_aa_and_ar_fails_for_good(tmp_path, td, run_service):
    answers = {1: "AE", 2: "AE"}
    with Hl7Receiver(lambda n, message: answers.get(n, "AA") if message.result_status == "P" else "AR") as receiver:
        service = _service(tmp_path, run_service, receiver.port)
        job = _admit(service, td, tmp_path)
        wait_for(lambda: service.spool.job(job).state is JobState.DELIVERED, 60, "delivery after two AE")
        assert [m.answer for m in receiver.received] == ["AE", "AE", "AA"]
        assert len({m.control_id for m in receiver.received}) == 1  # the resend is recognisable
        assert service.spool.job(job).attempts == 2
    assert receiver.invalid == []


def test_ar_fails_the_job_and_it_is_never_resent(tmp_path, td, run_service):
    with Hl7Receiver(lambda n, message: "AR") as receiver:
        service = _service(tmp_path, run_service, receiver.port)
        job = _admit(service, td, tmp_path)
        wait_for(lambda: service.spool.job(job).state is JobState.FAILED, 60, "the job to fail on AR")
        failed = service.spool.job(job)
        assert failed.error_class == "HL7Rejected" and "AR: test receiver says no" in failed.reason
        time.sleep(1.5)  # several retry intervals (0.2 s doubling to 1 s): a wrong retry would show
        assert len(receiver.received) == 1


def test_no_ack_in_time_is_retried_with_the_same_message(tmp_path, td, run_service):
    with Hl7Receiver(lambda n, message: None if n == 1 else "AA") as receiver:
        service = _service(tmp_path, run_service, receiver.port, timeout_s=1.0)
        job = _admit(service, td, tmp_path)
        wait_for(lambda: service.spool.job(job).state is JobState.DELIVERED, 60, "delivery after a lost ACK")
        assert [m.answer for m in receiver.received] == [None, "AA"]
        assert receiver.received[0].raw == receiver.received[1].raw


def test_a_receiver_dying_mid_message_gets_the_message_once_it_is_back(tmp_path, td, run_service):
    port = free_port()
    with Hl7Receiver(port=port, die_after=40) as dying:
        service = _service(tmp_path, run_service, port)
        job = _admit(service, td, tmp_path)
        assert dying.died.wait(30), "the sink never sent to the dying receiver"
    wait_for(lambda: service.spool.job(job).attempts >= 1, 30, "the job to wait")
    assert service.spool.job(job).state is JobState.REPORTED and dying.received == []
    with Hl7Receiver(port=port) as receiver:
        wait_for(lambda: service.spool.job(job).state is JobState.DELIVERED, 60, "delivery once the receiver is back")
        assert len(receiver.accepted("P")) == 1 and receiver.invalid == []


def test_while_one_sink_waits_the_others_get_each_report_once(tmp_path, td, run_service):
    """A FHIR server that answers 503 keeps the jobs waiting; the HL7 receiver and the folder are sent
    each report once, however often the jobs are retried."""
    from tests.support.fhir_peer import FhirPeer

    with Hl7Receiver() as receiver, FhirPeer(script=lambda n, method: 503 if n <= 6 else None) as peer:
        service = _service(tmp_path, run_service, receiver.port, fhir={"url": peer.url},
                           output={"dir": str(tmp_path / "out")})
        jobs = [_admit(service, td, tmp_path, name) for name in ("CT_small.dcm", "MR_small.dcm")]
        wait_for(lambda: all(service.spool.job(j).state is JobState.DELIVERED for j in jobs), 60,
                 "delivery once the FHIR server answers")
        assert max(service.spool.job(j).attempts for j in jobs) >= 2
        assert sorted(m.report_uid for m in receiver.received) == sorted(
            service.spool.job(j).sr_sop_instance_uid for j in jobs)
        assert len(peer.store) == 2


def test_a_restart_with_messages_pending_delivers_each_once(tmp_path, td, run_service):
    port = free_port()
    config = make_config(tmp_path, hl7={"destination": f"127.0.0.1:{port}", "timeout_s": 2.0})
    first = run_service(config)
    jobs = [_admit(first, td, tmp_path, name) for name in ("CT_small.dcm", "MR_small.dcm")]
    wait_for(lambda: all(first.spool.job(j).state is JobState.REPORTED and first.spool.job(j).attempts >= 1
                         for j in jobs), 60, "both reports waiting for the receiver")
    first.stop()
    with Hl7Receiver(port=port) as receiver:
        second = run_service(config)
        wait_for(lambda: all(second.spool.job(j).state is JobState.DELIVERED for j in jobs), 60,
                 "delivery after the restart")
        time.sleep(1.0)
        assert sorted(m.report_uid for m in receiver.received) == sorted(
            second.spool.job(j).sr_sop_instance_uid for j in jobs)


def test_hl7_keys_are_checked():
    with pytest.raises(ConfigError, match=r"\[hl7\] destination: .*HOST:PORT"):
        load_config(None, {"hl7": {"destination": "ris.example"}})
    with pytest.raises(ConfigError, match=r"\[hl7\] sending_facility"):
        load_config(None, {"hl7": {"sending_facility": "A|B"}})
    with pytest.raises(ConfigError, match=r"\[hl7\] processing_id"):
        load_config(None, {"hl7": {"processing_id": "X"}})
    with pytest.raises(ConfigError, match=r"\[hl7.tls\] cert/key"):
        load_config(None, {"hl7": {"destination": "ris:2575", "tls": {"cert": "/c.pem"}}})
    config = load_config(None, {"hl7": {"destination": "[::1]:2575"}})
    assert config.hl7.address == ("::1", 2575) and config.has_sink
