"""Every security point of the review station, through Starlette's TestClient."""

from __future__ import annotations

import time

import pytest

from tests.support.review import PASSWORD, api_token, csrf_of, login
from tests.support.privacy import PATIENT_ID, PATIENT_NAME


@pytest.mark.parametrize("path", ["/", "/reports/1.2.3", "/reports/1.2.3/image.png"])
def test_pages_without_a_session_redirect_to_login(client, path):
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"


@pytest.mark.parametrize("method, path", [("get", "/api/worklist"), ("get", "/api/reports/1.2.3"),
                                          ("post", "/api/reports/1.2.3/sign"), ("post", "/api/reports/1.2.3/reject")])
def test_the_api_without_a_token_is_401(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    bad = getattr(client, method)(path, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401


def test_a_session_cookie_is_httponly_strict_and_not_in_clear_in_the_database(client):
    response = login(client)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    value = client.cookies.get("medblip_review_session")
    stored = [r[0] for r in client.rs.store.db.rows("SELECT id_sha256 FROM review_sessions")]
    assert value not in stored and len(stored) == 1


def test_cookies_are_secure_under_tls(review_spool):
    from fastapi.testclient import TestClient

    from medblip_dicom.integrations.review.app import create_app

    app = create_app(review_spool(1).store, secure_cookies=True)
    with TestClient(app, base_url="https://127.0.0.1") as c:
        c.rs = None
        response = login(c)
    assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]


def test_a_session_ends_after_its_idle_time(review_spool):
    from fastapi.testclient import TestClient

    from medblip_dicom.integrations.review.app import create_app

    app = create_app(review_spool(1).store, session_idle_s=0.5)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        login(c)
        assert c.get("/", follow_redirects=False).status_code == 200
        time.sleep(0.8)
        response = c.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"


def test_a_post_without_the_csrf_token_is_refused(client):
    uid = client.rs.ai_uids[0]
    page = client.get("/login")
    # the login form itself: no token, a wrong one
    assert client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403
    assert client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": "x" + csrf_of(page.text)}
                       ).status_code == 403
    login(client)
    token = csrf_of(client.get(f"/reports/{uid}").text)
    for path, data in ((f"/reports/{uid}/sign", {"text": "forged", "action": "edited"}),
                       (f"/reports/{uid}/reject", {"reason": "forged"}), ("/logout", {})):
        assert client.post(path, data=data, follow_redirects=False).status_code == 403
        assert client.post(path, data={**data, "csrf": token[::-1]}, follow_redirects=False).status_code == 403
    assert client.rs.store.item(uid)["state"] == "pending"
    response = client.post(f"/reports/{uid}/sign", data={"text": "real", "action": "edited", "csrf": token,
                                                        "version": uid}, follow_redirects=False)
    assert response.status_code == 303 and client.rs.store.item(uid)["state"] == "signed"


def test_repeated_wrong_passwords_are_slowed_down(client):
    for _ in range(3):  # max_login_failures = 3 in the fixture
        assert login(client, password="wrong password").status_code == 401
    blocked = login(client, password="wrong password")
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    # while blocked, even the right password waits; so does an unknown name after its own failures
    assert login(client).status_code == 429
    for _ in range(4):
        last = login(client, username="mallory", password="guess")
    assert last.status_code == 429
    with client.rs.store.db.write() as db:  # the waits are over (the last failures long ago)
        db.execute("UPDATE review_login_failures SET last_failure=last_failure-3600")
    assert login(client).status_code == 303  # after the wait the right password works again


def test_passwords_and_tokens_are_never_stored_in_clear(client):
    headers = api_token(client)
    token = headers["Authorization"].split()[1]
    blob = (client.rs.root / "journal.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in client.rs.root.glob("journal.sqlite-*"))
    assert PASSWORD.encode() not in blob and token.encode() not in blob
    assert client.rs.store.db.rows("SELECT password_hash FROM review_users")[0][0].startswith("$argon2id$")


def test_a_caption_holding_a_script_shows_as_text(review_spool):
    from fastapi.testclient import TestClient

    from medblip_dicom.integrations.review.app import create_app

    rs = review_spool(1, captions=["<script>alert('x')</script> & more"])
    with TestClient(create_app(rs.store), base_url="http://127.0.0.1") as c:
        login(c)
        pages = [c.get("/").text, c.get(f"/reports/{rs.ai_uids[0]}").text,
                 c.get(f"/reports/{rs.ai_uids[0]}?message=<script>x</script>").text]
    for html in pages:
        assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert "<script>x</script>" not in pages[2]


@pytest.mark.parametrize("path", ["/reports/..%2F..%2Fjournal.sqlite", "/reports/1.2.3abc", "/reports/%2e%2e%2fjournal.sqlite",
                                  "/reports/1..2", "/reports/" + "1." * 40 + "1", "/reports/1.2/image.png?window=../x"])
def test_uids_in_urls_are_validated(client, path):
    login(client)
    response = client.get(path, follow_redirects=False)
    assert response.status_code in (404, 422)
    assert b"SQLite" not in response.content


def test_the_api_refuses_traversal_and_unknown_fields(client):
    headers = api_token(client)
    assert client.get("/api/reports/..%2F..%2Fetc", headers=headers).status_code in (404, 422)
    uid = client.rs.ai_uids[0]
    assert client.post(f"/api/reports/{uid}/sign", json={"text": "x", "extra": 1}, headers=headers).status_code == 422
    assert client.post(f"/api/reports/{uid}/sign", json={"text": "x", "predecessor": "../1"},
                       headers=headers).status_code == 422
    assert client.post(f"/api/reports/{uid}/reject", json={"reason": ""}, headers=headers).status_code == 422


def test_the_audit_table_records_login_view_sign_and_reject_without_patient_data(client, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="medblip_dicom")
    a, b = client.rs.ai_uids
    login(client)
    token = csrf_of(client.get(f"/reports/{a}").text)
    client.post(f"/reports/{a}/sign", data={"text": "fine", "action": "edited", "csrf": token, "version": a})
    client.post(f"/reports/{b}/reject", data={"reason": "wrong side", "csrf": token})
    rows = client.rs.store.db.audit_rows()
    actions = [(r["username"], r["action"], r["target"]) for r in reversed(rows) if r["username"]]
    assert ("alice", "login", None) in actions
    assert ("alice", "view", a) in actions and ("alice", "sign", a) in actions and ("alice", "reject", b) in actions
    assert all(r["at"] > 0 for r in rows)
    text = caplog.text + repr(rows)
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "Ottoline" not in text
    assert PATIENT_NAME in client.get("/").text or client.rs.store.counts()["pending"] == 0


def test_security_headers_on_every_response(client):
    for response in (client.get("/login"), client.get("/", follow_redirects=False)):
        assert response.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
