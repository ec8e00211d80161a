"""The JSON API: worklist, one report, sign, reject; answers a reporting system can act on."""

from __future__ import annotations

import pydicom

from tests.support.review import api_token
from tests.support.dicom import validate_sr


def test_worklist_newest_first_with_counts_and_filters(client):
    headers = api_token(client)
    body = client.get("/api/worklist", headers=headers).json()
    assert body["counts"] == {"pending": 2, "signed": 0, "rejected": 0}
    assert [i["ai_uid"] for i in body["items"]] == list(reversed(client.rs.ai_uids))  # newest first
    assert {i["modality"] for i in body["items"]} == {"CT", "MR"}
    ct = client.get("/api/worklist?modality=ct", headers=headers).json()["items"]
    assert [i["modality"] for i in ct] == ["CT"]
    assert client.get("/api/worklist?model=tiny-blip", headers=headers).json()["items"]
    assert client.get("/api/worklist?model=other", headers=headers).json()["items"] == []
    assert client.get(f"/api/worklist?date={ct[0]['study_date']}", headers=headers).json()["items"][0]["modality"] == "CT"
    assert client.get("/api/worklist?date=2004", headers=headers).status_code == 422


def test_sign_then_the_same_text_again_then_an_amendment_then_a_conflict(client):
    headers = api_token(client)
    uid = client.rs.ai_uids[0]
    first = client.post(f"/api/reports/{uid}/sign", json={"text": "no acute finding"}, headers=headers)
    assert first.status_code == 201 and first.json()["predecessor_uid"] == uid and first.json()["edited"]
    again = client.post(f"/api/reports/{uid}/sign", json={"text": "no acute finding"}, headers=headers)
    assert again.status_code == 200 and again.json()["uid"] == first.json()["uid"] and not again.json()["created"]
    stale = client.post(f"/api/reports/{uid}/sign", json={"text": "other"}, headers=api_token(client, "bob"))
    assert stale.status_code == 409 and "alice signed this report meanwhile" in stale.json()["detail"]
    amended = client.post(f"/api/reports/{uid}/sign", json={"text": "other", "predecessor": first.json()["uid"]},
                          headers=api_token(client, "bob"))
    assert amended.status_code == 201 and amended.json()["predecessor_uid"] == first.json()["uid"]
    report = client.get(f"/api/reports/{uid}", headers=headers).json()
    assert report["state"] == "signed" and report["current_uid"] == amended.json()["uid"]
    assert [s["reviewer"] for s in report["signatures"]] == ["alice", "bob"]
    assert client.post(f"/api/reports/{uid}/reject", json={"reason": "late"}, headers=headers).status_code == 409


def test_reject_records_the_reason_and_forbids_signing(client):
    headers = api_token(client)
    uid = client.rs.ai_uids[1]
    response = client.post(f"/api/reports/{uid}/reject", json={"reason": "wrong body part"}, headers=headers)
    assert response.status_code == 200 and response.json()["rejection_note_uid"] is None
    report = client.get(f"/api/reports/{uid}", headers=headers).json()
    assert (report["state"], report["reason"], report["decided_by"]) == ("rejected", "wrong body part", "alice")
    assert client.post(f"/api/reports/{uid}/sign", json={"text": "x"}, headers=headers).status_code == 409
    assert client.get("/api/worklist", headers=headers).json()["counts"]["rejected"] == 1


def test_unknown_reports_and_empty_texts(client):
    headers = api_token(client)
    assert client.get("/api/reports/1.2.3.4", headers=headers).status_code == 404
    assert client.post("/api/reports/1.2.3.4/sign", json={"text": "x"}, headers=headers).status_code == 404
    empty = client.post(f"/api/reports/{client.rs.ai_uids[0]}/sign", json={"text": "   "}, headers=headers)
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]


def test_signed_reports_leave_through_the_services_delivery(client):
    from medblip_dicom.integrations.delivery.loop import Delivery

    headers = api_token(client)
    uid = client.rs.ai_uids[0]
    signed = client.post(f"/api/reports/{uid}/sign", json={"text": "delivered text"}, headers=headers).json()["uid"]
    assert not (client.rs.out / f"{signed}.dcm").exists()  # it waits for a service's delivery loop
    Delivery(client.rs.spool, out_dir=client.rs.out).deliver_all_once()
    path = client.rs.out / f"{signed}.dcm"
    validate_sr(path)
    assert pydicom.dcmread(path).VerificationFlag == "VERIFIED"
    (job,) = [j for j in client.rs.spool.jobs() if j.origin == "review"]
    assert job.state.value == "delivered" and job.disposed
    assert not (client.rs.root / job.input_file).exists()  # the delivery link went; the signed copy stays
    assert (client.rs.root / "review" / "signed" / f"{signed}.dcm").exists()
