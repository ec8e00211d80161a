"""The FHIR R4 sink against an in-process peer that validates every resource with fhir.resources and
honours conditional update and create: one DiagnosticReport per report whose status moves on, reruns
create nothing, refusals fail the job, an unavailable server is retried, the token is sent."""

from __future__ import annotations

import pydicom
import pytest

from medblip_dicom.integrations.config.checks import ConfigError
from medblip_dicom.integrations.config.fhir import FhirConfig
from medblip_dicom.integrations.config.file import load_config
from medblip_dicom.integrations.delivery.sinks.base import DestinationUnavailable
from medblip_dicom.integrations.delivery.sinks.fhir import FhirSink
from medblip_dicom.integrations.delivery.sinks.fhirreport import build_resource
from medblip_dicom.integrations.spool import JobState
from medblip_dicom.report_view import read_document

from tests.integrations.delivery.documents import CAPTION, make_documents
from tests.support.dicom import reissued
from tests.support.env import free_port, wait_for
from tests.support.fhir_peer import FhirPeer, problems
from tests.support.services import make_config


def test_the_versions_of_a_report_update_one_diagnostic_report(tmp_path):
    docs = make_documents(tmp_path, AccessionNumber="ACC42")
    with FhirPeer() as peer:
        sink = FhirSink(FhirConfig(url=peer.url, patient_system="urn:oid:1.2.3.4"))
        assert all(o.delivered for o in sink.send([docs.ai]))
        (stored,) = peer.store.values()
        assert stored.resource["status"] == "preliminary" and stored.resource["conclusion"] == CAPTION
        assert all(o.delivered for o in sink.send([docs.signed, docs.amended]))
        assert list(peer.store) == [stored.id]  # updated, never a second resource
        assert [v["status"] for v in stored.versions] == ["preliminary", "final", "amended"]
        # A rerun of every document creates nothing and never goes back to preliminary.
        assert all(o.delivered for o in sink.send([docs.ai, docs.signed, docs.amended]))
        assert list(peer.store) == [stored.id] and stored.resource["status"] == "amended"
        sink.send([docs.rejection])
    final = stored.versions[1]
    interpreter = {c["id"]: c for c in final["contained"]}["reviewer"]
    assert interpreter["name"][0]["family"] == "Doe" and final["resultsInterpreter"] == [{"reference": "#reviewer"}]
    ai = pydicom.dcmread(docs.ai)
    assert final["identifier"][0]["value"] == f"urn:oid:{ai.SOPInstanceUID}"
    assert final["subject"]["identifier"] == {"system": "urn:oid:1.2.3.4", "value": ai.PatientID}
    assert final["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{ai.StudyInstanceUID}"
    assert final["basedOn"][0]["identifier"]["value"] == "ACC42"
    device = {c["id"]: c for c in final["contained"]}["model"]
    assert (device["deviceName"][0]["name"], device["version"][0]["value"]) == ("tiny-blip", "v1.0")
    cancelled = [s for s in peer.store.values() if s.id != stored.id]
    assert [s.resource["status"] for s in cancelled] == ["cancelled"]
    assert "wrong side & wrong patient?" in cancelled[0].resource["conclusion"]


def test_every_resource_passes_the_peers_validation(tmp_path):
    docs = make_documents(tmp_path)
    for path in (docs.ai, docs.signed, docs.amended, docs.rejection):
        assert problems(build_resource(read_document(pydicom.dcmread(path)))) == []
    broken = build_resource(read_document(pydicom.dcmread(docs.signed)))
    broken["resultsInterpreter"] = [{"reference": "#model"}]  # a Device cannot interpret results in R4
    assert problems(broken)


def test_the_token_is_sent_and_a_refusal_is_permanent(tmp_path):
    docs = make_documents(tmp_path)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with FhirPeer(token="s3cret") as peer:
        assert FhirSink(FhirConfig(url=peer.url, token_file=token)).send([docs.ai])[0].delivered
        (refused,) = FhirSink(FhirConfig(url=peer.url)).send([docs.ai])
    assert not refused.delivered and refused.permanent and "HTTP 401" in refused.message


def test_a_server_that_cannot_be_reached_raises_unavailable(tmp_path):
    docs = make_documents(tmp_path)
    with pytest.raises(DestinationUnavailable, match="cannot be reached"):
        FhirSink(FhirConfig(url=f"http://127.0.0.1:{free_port()}/fhir", timeout_s=2)).send([docs.ai])


def test_a_running_service_retries_503_and_fails_a_422(tmp_path, td, run_service):
    def script(n, method):
        if n <= 2:
            return 503
        return 422 if n == 5 else None  # the second report's first PUT is refused

    with FhirPeer(script=script) as peer:
        service = run_service(make_config(tmp_path, fhir={"url": peer.url}))
        first = reissued(td, "CT_small.dcm", tmp_path / "in")
        job = service.spool.add_file(first, origin="test", name=first.name).job_id
        wait_for(lambda: service.spool.job(job).state is JobState.DELIVERED, 60, "delivery after 503s")
        assert service.spool.job(job).attempts >= 1
        second = reissued(td, "MR_small.dcm", tmp_path / "in")
        other = service.spool.add_file(second, origin="test", name=second.name).job_id
        wait_for(lambda: service.spool.job(other).state is JobState.FAILED, 60, "the 422 to fail the job")
        failed = service.spool.job(other)
        assert failed.error_class == "FHIRRejected" and "HTTP 422" in failed.reason
        assert len(peer.store) == 1


def test_fhir_keys_are_checked():
    with pytest.raises(ConfigError, match=r"\[fhir\] url: .*base URL"):
        load_config(None, {"fhir": {"url": "ftp://fhir.example/r4"}})
    with pytest.raises(ConfigError, match="travel in clear"):
        load_config(None, {"fhir": {"url": "http://fhir.example/r4", "token_env": "FHIR_TOKEN"}})
    with pytest.raises(ConfigError, match=r"\[fhir\] patient_system"):
        load_config(None, {"fhir": {"patient_system": "mrn"}})
    with pytest.raises(ConfigError, match=r"\[fhir\] token_file"):
        load_config(None, {"fhir": {"token_file": "/t", "token_env": "T"}})
    config = load_config(None, {"fhir": {"url": "https://fhir.example/r4/"}})
    assert config.fhir.url == "https://fhir.example/r4" and config.has_sink
