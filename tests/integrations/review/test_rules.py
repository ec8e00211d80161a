"""The pages and the API follow one set of rules: the same reason rule, the same UIDs, the same
statuses and sentences for a refused decision; the station reaches every route as one dependency."""

from __future__ import annotations

import html
import re
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from fastapi.testclient import TestClient

from medblip_dicom.integrations.review.app import create_app
from tests.support.review import api_token, csrf_of, login

ROUTES = Path(__file__).resolve().parents[3] / "integrations" / "review"


def _page_refusal(response) -> str:
    """The sentence a report page shows for a refused decision."""
    return html.unescape(re.search(r'<p class="message" id="message">([^<]*)</p>', response.text).group(1))


@pytest.mark.parametrize("reason", ["", "   ", "\t \r\n", None])
def test_a_rejection_needs_a_reason_on_the_page_as_in_the_api(client, reason):
    uid = client.rs.ai_uids[0]
    login(client)
    page = client.get(f"/reports/{uid}").text
    form = {"csrf": csrf_of(page)} | ({} if reason is None else {"reason": reason})
    on_page = client.post(f"/reports/{uid}/reject", data=form, follow_redirects=False)
    in_api = client.post(f"/api/reports/{uid}/reject", json={} if reason is None else {"reason": reason},
                         headers=api_token(client))
    assert on_page.status_code == in_api.status_code == 422
    assert "the rejection reason is empty" in in_api.json()["detail"]
    assert _page_refusal(on_page) == in_api.json()["detail"]
    assert client.rs.store.item(uid)["state"] == "pending"
    assert client.rs.store.db.rows("SELECT COUNT(*) FROM review_audit WHERE action='reject'")[0][0] == 0


def test_a_refused_reason_stays_in_its_field(client):
    uid = client.rs.ai_uids[0]
    login(client)
    page = client.get(f"/reports/{uid}").text
    refused = client.post(f"/reports/{uid}/reject", data={"csrf": csrf_of(page), "reason": "wrong\u2028 side"})
    assert refused.status_code == 422 and "position 6" in _page_refusal(refused)
    assert 'value="wrong\u2028 side"' in refused.text


@pytest.mark.parametrize("uid", ["1.2.3abc", "1..2", "1.2.", "-1.2", "1" * 65, "%201.2", "1.2%0A"])
def test_pages_and_api_refuse_the_same_uids(client, uid):
    login(client)
    headers = api_token(client)
    page = client.get(f"/reports/{uid}", follow_redirects=False)
    api = client.get(f"/api/reports/{uid}", headers=headers)
    assert page.status_code == api.status_code == 422
    assert api.json()["detail"] == page.text == "invalid request: sr_uid"
    assert client.post(f"/api/reports/{client.rs.ai_uids[0]}/sign", json={"text": "x", "predecessor": uid},
                       headers=headers).status_code == 422
    form = {"csrf": csrf_of(client.get(f"/reports/{client.rs.ai_uids[0]}").text), "text": "x", "version": uid}
    assert client.post(f"/reports/{client.rs.ai_uids[0]}/sign", data=form).status_code == 422
    assert client.rs.store.item(client.rs.ai_uids[0])["state"] == "pending"


def test_an_unknown_report_is_404_on_both_with_one_sentence(client):
    login(client)
    page = client.get("/reports/1.2.3.4", follow_redirects=False)
    api = client.get("/api/reports/1.2.3.4", headers=api_token(client))
    assert page.status_code == api.status_code == 404
    assert page.text == api.json()["detail"] == "no report under review has the UID 1.2.3.4"


def test_a_report_whose_ai_file_is_gone_is_409_on_both_with_one_sentence(client):
    uid = client.rs.ai_uids[0]
    login(client)
    page = client.get(f"/reports/{uid}").text
    client.rs.store.item_files(client.rs.store.item(uid))[1].unlink()
    on_page = client.post(f"/reports/{uid}/sign", data={"csrf": csrf_of(page), "action": "edited", "text": "fine",
                                                       "version": uid})
    in_api = client.post(f"/api/reports/{uid}/sign", json={"text": "fine"}, headers=api_token(client))
    assert on_page.status_code == in_api.status_code == 409
    assert f"{uid}.dcm" in in_api.json()["detail"]
    assert _page_refusal(on_page) == in_api.json()["detail"]


def test_an_empty_or_overlong_text_is_refused_alike(client):
    uid = client.rs.ai_uids[0]
    login(client)
    page = client.get(f"/reports/{uid}").text
    for text, words in (("  ", "the signed text is empty"), ("x" * 20001, "20001 characters; at most 20000")):
        on_page = client.post(f"/reports/{uid}/sign", data={"csrf": csrf_of(page), "action": "edited", "text": text,
                                                           "version": uid})
        in_api = client.post(f"/api/reports/{uid}/sign", json={"text": text}, headers=api_token(client))
        assert on_page.status_code == in_api.status_code == 422
        assert words in in_api.json()["detail"] and _page_refusal(on_page) == in_api.json()["detail"]
    assert client.rs.store.item(uid)["state"] == "pending"


def test_without_kept_sources_a_decided_report_says_why_it_has_no_image(review_spool):
    rs = review_spool(2)
    rs.store.keep_sources = False
    with TestClient(create_app(rs.store), base_url="http://127.0.0.1") as c:
        login(c)
        waiting = c.get(f"/reports/{rs.ai_uids[1]}").text
        assert 'id="source-image"' in waiting and 'id="no-image"' not in waiting  # kept until the decision
        c.post(f"/reports/{rs.ai_uids[0]}/sign", data={"csrf": csrf_of(waiting), "action": "as-is",
                                                       "version": rs.ai_uids[0]})
        decided = c.get(f"/reports/{rs.ai_uids[0]}")
        image = c.get(f"/reports/{rs.ai_uids[0]}/image.png")
    assert decided.status_code == 200 and image.status_code == 404 and "keep_sources = false" in image.text
    assert 'id="source-image"' not in decided.text and 'class="window"' not in decided.text
    assert re.search(r'id="no-image">The source image is not kept after the first decision \(\[review\] '
                     r'keep_sources = false\)', decided.text)


def test_a_lost_source_is_said_too(client):
    uid = client.rs.ai_uids[0]
    client.rs.store.item_files(client.rs.store.item(uid))[0].unlink()
    login(client)
    page = client.get(f"/reports/{uid}").text
    assert 'id="source-image"' not in page and "its file is missing from the review folder" in page


def _station(app):
    """The station an app was made with, as its routes receive it."""
    from medblip_dicom.integrations.review.deps import station

    return station(SimpleNamespace(app=app))


def test_every_route_gets_the_station_as_one_dependency(review_spool):
    from medblip_dicom.integrations.review.deps import station

    first, second = review_spool(1), review_spool(2)
    app = create_app(first.store, organization="First Hospital")
    app.dependency_overrides[station] = lambda: _station(create_app(second.store, organization="Second Hospital"))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.rs = second
        headers = api_token(c)
        listed = [i["ai_uid"] for i in c.get("/api/worklist", headers=headers).json()["items"]]
        login(c, "bob")
        pages = [c.get(f"/reports/{uid}").status_code for uid in (second.ai_uids[0], first.ai_uids[0])]
        signed = c.post(f"/api/reports/{second.ai_uids[0]}/sign", json={"text": "seen"}, headers=headers)
    assert listed == list(reversed(second.ai_uids)) and pages == [200, 404] and signed.status_code == 201
    (signature,) = second.store.signatures(second.ai_uids[0])
    assert pydicom.dcmread(signature.path).VerifyingObserverSequence[0].VerifyingOrganization == "Second Hospital"
    assert first.store.counts()["signed"] == 0


def test_only_deps_reads_the_apps_state():
    readers = sorted(p.relative_to(ROUTES).as_posix() for p in ROUTES.rglob("*.py") if "app.state" in p.read_text())
    assert readers == ["deps.py"]
