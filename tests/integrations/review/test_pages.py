"""The pages: worklist, next item after a decision, the second reviewer's message, reject, log out."""

from __future__ import annotations

from fastapi.testclient import TestClient

from medblip_dicom.integrations.review.app import create_app

from tests.support.review import csrf_of, login


def test_sign_goes_on_to_the_next_report_and_the_second_reviewer_is_told(client):
    a, b = client.rs.ai_uids
    login(client)
    worklist = client.get("/")
    assert worklist.text.index(b) < worklist.text.index(a)  # newest first
    page_a = client.get(f"/reports/{a}").text
    with TestClient(client.app, base_url="http://127.0.0.1") as bob:
        bob.rs = client.rs
        login(bob, "bob")
        page_b = bob.get(f"/reports/{a}").text  # both opened the same report
        first = client.post(f"/reports/{a}/sign", data={"csrf": csrf_of(page_a), "action": "as-is", "version": a,
                                                        "text": "ignored for as-is"}, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == f"/reports/{b}?message=signed"
        second = bob.post(f"/reports/{a}/sign", data={"csrf": csrf_of(page_b), "action": "edited", "version": a,
                                                      "text": "bob's text"})
        assert second.status_code == 409 and "alice signed this report meanwhile" in second.text
    (signature,) = client.rs.store.signatures(a)
    assert signature.text == client.rs.store.item(a)["caption"] and not signature.edited
    done = client.post(f"/reports/{b}/reject", data={"csrf": csrf_of(page_a), "reason": "artefact"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/?done=rejected"
    assert 'id="count-signed">1<' in client.get("/").text and 'id="count-rejected">1<' in client.get("/").text
    assert client.get("/?modality=MR").text.count("open-report") == 0  # the MR one is decided
    assert client.get("/?state=rejected").text.count("open-report") == 1


def test_log_out_ends_the_session(client):
    login(client)
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.rs.store.db.rows("SELECT COUNT(*) FROM review_sessions")[0][0] == 0


def test_an_empty_text_is_refused_on_the_page(review_spool):
    rs = review_spool(1)
    with TestClient(create_app(rs.store), base_url="http://127.0.0.1") as c:
        login(c)
        page = c.get(f"/reports/{rs.ai_uids[0]}").text
        response = c.post(f"/reports/{rs.ai_uids[0]}/sign", data={"csrf": csrf_of(page), "action": "edited",
                                                                 "text": "  ", "version": rs.ai_uids[0]})
    assert response.status_code == 422 and "empty" in response.text
    assert rs.store.item(rs.ai_uids[0])["state"] == "pending"
