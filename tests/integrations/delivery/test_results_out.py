"""One ``medblip node`` run sends an AI report, and after a signature through the review station's API
its signed successor, to every place results go: Orthanc (SR and PDF, by C-STORE), the RIS (HL7 v2
ORU^R01, P then F) and the FHIR server (one DiagnosticReport, preliminary then final)."""

from __future__ import annotations

import pydicom

from medblip_dicom.integrations.review.accounts import Accounts
from medblip_dicom.integrations.review.app import create_app
from medblip_dicom.integrations.review.store import ReviewStore

from tests.support.dicom import load_template, reissue
from tests.support.env import free_port, run_tool, wait_for
from tests.support.fhir_peer import FhirPeer
from tests.support.hl7_receiver import Hl7Receiver
from tests.support.privacy import scan_for_patient_data
from tests.support.review import PASSWORD
from tests.support.services import service_config

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def test_one_node_run_delivers_the_ai_report_and_its_signed_successor_everywhere(
        tmp_path, tiny_model_dir, services, orthanc_factory, tool):
    from fastapi.testclient import TestClient

    pacs = orthanc_factory()
    pacs.start()
    port = free_port()
    source, _ = reissue(load_template("CT_small.dcm"), tmp_path / "in")  # the test patient: its name never in a log
    study = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    with Hl7Receiver() as ris, FhirPeer() as fhir:
        config = service_config(
            tmp_path, tiny_model_dir, node={"ae_title": "MEDBLIP", "port": port},
            output={"pdf": True},
            forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"},
            hl7={"destination": f"127.0.0.1:{ris.port}", "receiving_application": "TESTRIS", "timeout_s": 10.0},
            fhir={"url": fhir.url, "patient_system": "urn:oid:1.2.3.4"},
            review={"enabled": True, "organization": "Test Hospital"})
        node = services("node", config)
        node.start()
        node.wait_ready("listening on")
        sent = run_tool([tool("dcmsend"), "127.0.0.1", str(port), "-aec", "MEDBLIP", "-aet", "MODALITY", str(source)])
        assert sent.returncode == 0, sent.stdout + sent.stderr

        wait_for(lambda: ris.accepted("P") and fhir.store and pacs.count(study, "SR") == 1, 180,
                 "the AI report in Orthanc, the RIS and the FHIR server")
        store = ReviewStore(tmp_path / "spool", organization="Test Hospital", pdf=True)  # as `medblip review` does
        try:
            Accounts(store.db).add_user("alice", "Doe^Alice", PASSWORD)
            token = Accounts(store.db).add_token("alice")
            with TestClient(create_app(store, organization="Test Hospital"), base_url="http://127.0.0.1") as station:
                (item,) = station.get("/api/worklist", headers={"Authorization": f"Bearer {token}"}).json()["items"]
                signed = station.post(f"/api/reports/{item['ai_uid']}/sign", json={"text": "no acute findings"},
                                      headers={"Authorization": f"Bearer {token}"})
                assert signed.status_code == 201, signed.text
        finally:
            store.close()
        wait_for(lambda: ris.accepted("F") and pacs.count(study, "SR") == 2 and pacs.count(study, "DOC") == 2, 60,
                 "the signed report in Orthanc and the RIS")
        wait_for(lambda: next(iter(fhir.store.values())).resource["status"] == "final", 30,
                 "the FHIR report final")
        assert node.stop() == 0

    assert ris.invalid == [] and [m.result_status for m in ris.received] == ["P", "F"]
    ai, final = ris.received
    assert ai.report_uid == item["ai_uid"] == final.ai_report_uid and final.text == "no acute findings"
    (report,) = fhir.store.values()  # one resource, updated
    assert [v["status"] for v in report.versions] == ["preliminary", "final"]
    assert report.resource["identifier"][0]["value"] == f"urn:oid:{item['ai_uid']}"
    pdfs = pacs.instances(study, "DOC")  # the AI report's PDF and the signed one's, to the PACS only
    assert sorted(str(p.VerificationFlag) for p in pdfs) == ["UNVERIFIED", "VERIFIED"]
    assert all(p.SOPClassUID == ENCAPSULATED_PDF for p in pdfs)
    assert scan_for_patient_data(node.log, tmp_path / "spool") > 0
