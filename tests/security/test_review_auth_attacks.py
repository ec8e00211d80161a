"""Attacks on the review station's logins, throttling, revocation and messages.

Where concurrency or client addresses matter, the station runs as ``medblip review`` (a process on
127.0.0.1, a free port) and clients connect from distinct loopback addresses (127.0.0.2, 127.0.0.3,
...: distinct peers on Linux), as different machines would. Rules under test:

- parallel wrong guesses are all counted, and those beyond the limit are refused without hashing;
- at most a few passwords are hashed at once, so a burst does not grow the station's memory;
- an outsider's failures never keep a reviewer at another address out;
- a password spray (many names, one guess each) from one address is slowed after a few;
- ``X-Forwarded-For`` is not believed;
- a revoked token, a new password, a disabled or removed reviewer end access at once;
- a page shows only its own messages, whatever a link puts in ``?message=`` / ``?done=``;
- a station on a configuration whose ``[review] enabled`` is false says so at start.
"""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from medblip_dicom.apps.main import main

from tests.support.review import PASSWORD, csrf_of, login
from tests.support.env import free_port, wait_for
from tests.support.services import ServiceProcess, write_toml

MAX_FAILURES = 3
#: The most password hashes a station may run at once (argon2-cffi's defaults: 64 MiB each).
HASH_BOUND = 4
BURST = 30


@dataclass
class Station:
    """A running ``medblip review`` and its spool."""

    url: str
    process: ServiceProcess
    rs: object

    def client(self, address: str = "127.0.0.2") -> httpx.Client:
        """An HTTP client whose connections come from `address`."""
        return httpx.Client(base_url=self.url, transport=httpx.HTTPTransport(local_address=address), trust_env=False,
                            timeout=120, follow_redirects=False)

    def audit(self, action: str) -> list[tuple[str | None, str | None]]:
        """(username, detail) of the audit rows of `action`."""
        return [(r[0], r[1]) for r in self.rs.store.db.rows(
            "SELECT username, detail FROM review_audit WHERE action=? ORDER BY id", (action,))]


def log_in(client: httpx.Client, username: str, password: str, headers: dict[str, str] | None = None,
           before_post: Callable[[], object] | None = None) -> httpx.Response:
    """The login form as a browser fills it: the page (CSRF token and cookie), then the POST."""
    token = csrf_of(client.get("/login", headers=headers).text)
    if before_post is not None:
        before_post()
    return client.post("/login", data={"username": username, "password": password, "csrf": token}, headers=headers)


@pytest.fixture
def station(review_spool, services, tmp_path: Path) -> Iterator[Callable[..., Station]]:
    """Start ``medblip review`` on a spool with two AI reports and reviewers alice and bob."""
    def start(**review: object) -> Station:
        rs = review_spool(2)
        port = free_port()
        config = write_toml(tmp_path / f"station{port}.toml", {
            "spool": {"dir": str(rs.root), "min_free_bytes": 0},
            "review": {"port": port, "max_login_failures": MAX_FAILURES, "organization": "Test Hospital", **review},
        })
        process = services("review", config).start()
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.alive(), process.log_text()[-3000:]
            try:
                return httpx.get(f"{url}/login", timeout=5, trust_env=False).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 120, "the review station to answer")
        return Station(url, process, rs)

    yield start


def parallel_logins(station: Station, attempts: list[tuple[str, str, str]]) -> tuple[list[httpx.Response], float]:
    """Each (address, username, password) from its own thread and connection, the POSTs released
    together; returns the responses and the seconds from the release to the last answer."""
    barrier = threading.Barrier(len(attempts), timeout=120)
    released: list[float] = []

    def attempt(item: tuple[str, str, str]) -> httpx.Response:
        address, username, password = item
        with station.client(address) as c:
            def go() -> None:
                if barrier.wait() == 0:
                    released.append(time.monotonic())
            return log_in(c, username, password, before_post=go)

    with ThreadPoolExecutor(len(attempts)) as pool:
        responses = list(pool.map(attempt, attempts))
    return responses, time.monotonic() - released[0]


def expired_waits(burst_s: float) -> int:
    """How many waits of 2, 4, 8 ... s could have ended within `burst_s` (one more guess each)."""
    ended, total, wait = 0, 0.0, 2.0
    while total + wait < burst_s:
        total, wait, ended = total + wait, wait * 2, ended + 1
    return ended


def test_parallel_wrong_guesses_are_all_counted_and_those_over_the_limit_are_not_checked(station, figures):
    s = station()
    responses, burst_s = parallel_logins(s, [("127.0.0.2", "alice", f"wrong guess {i}") for i in range(BURST)])
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {401, 429, 503}, statuses
    checked = statuses[401]
    # Only the guesses under the limit were checked (plus one per wait that ended during a slow burst).
    assert 1 <= checked <= MAX_FAILURES + expired_waits(burst_s), (statuses, burst_s)
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code != 401)
    assert all("try again in" in r.text for r in responses if r.status_code != 401)
    # Every checked guess is in the audit trail, and every attempt is counted: none lost to a race.
    assert [u for u, _ in s.audit("login-failed")] == ["alice"] * checked
    assert all(detail == "127.0.0.2" for _, detail in s.audit("login-failed"))
    (failures, refused), = s.rs.store.db.rows("SELECT failures, refused FROM review_login_failures WHERE scope='pair'")
    assert failures == checked + statuses[503] and failures + refused == BURST
    figures.record("review_parallel_wrong_guesses", attempts=BURST, checked=checked, refused=statuses[429],
                   busy=statuses[503], burst_s=round(burst_s, 2))


def test_a_burst_of_logins_hashes_a_few_passwords_at_a_time_and_memory_stays_bounded(station, figures):
    from argon2 import PasswordHasher

    s = station()
    before = s.process.rss_peak_now()
    # 30 machines guess alice's password at once: no per-address limit stops any of them.
    responses, burst_s = parallel_logins(s, [(f"127.0.0.{10 + i}", "alice", "wrong guess") for i in range(BURST)])
    after = s.process.rss_peak_now()
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {401, 503}, statuses
    hash_bytes = PasswordHasher().memory_cost * 1024
    growth = after - before
    figures.record("review_login_burst_memory", attempts=BURST, vmhwm_before_mib=before // 2**20,
                   vmhwm_after_mib=after // 2**20, growth_mib=growth // 2**20, busy=statuses[503],
                   burst_s=round(burst_s, 2))
    assert growth < HASH_BOUND * hash_bytes, f"peak RSS grew by {growth // 2**20} MiB in a burst of {BURST} logins"
    (failures,), = s.rs.store.db.rows("SELECT failures FROM review_login_failures WHERE scope='name'")
    assert failures == BURST  # every attempt counted, checked or answered busy
    # alice's name is now under attack from 30 addresses; from her own machine she still gets in.
    with s.client("127.0.0.3") as alice:
        assert log_in(alice, "alice", PASSWORD).headers.get("location") == "/"
        assert alice.get("/").status_code == 200


def test_an_attacker_elsewhere_cannot_lock_a_reviewer_out(station):
    s = station()
    stop, codes = threading.Event(), []

    def hammer() -> None:  # wrong passwords for alice, one after the other, until alice is done
        with s.client("127.0.0.2") as attacker:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                codes.append(log_in(attacker, "alice", f"guess {len(codes)}").status_code)

    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(hammer)
        try:
            wait_for(lambda: 429 in codes or running.done(), 60, "the attacker to be made to wait")
            with s.client("127.0.0.3") as alice:  # at her own machine: one typo, then the right password
                assert log_in(alice, "alice", "a typo").status_code == 401
                response = log_in(alice, "alice", PASSWORD)
                assert response.status_code == 303 and response.headers["location"] == "/"
                assert alice.get("/").status_code == 200
        finally:
            stop.set()
        running.result()
    assert codes[:MAX_FAILURES] == [401] * MAX_FAILURES
    assert codes.count(401) <= MAX_FAILURES + expired_waits(time.monotonic() - started), codes


def test_a_password_spray_from_one_address_is_slowed_and_x_forwarded_for_is_not_believed(station):
    s = station()
    names = [f"user{i}" for i in range(20)] + ["alice", "bob"]
    codes = []
    started = time.monotonic()
    with s.client("127.0.0.1") as sprayer:
        for i, name in enumerate(names):  # a new address claimed in every request
            codes.append(log_in(sprayer, name, "Winter2024!", headers={"X-Forwarded-For": f"10.9.{i}.7"}).status_code)
    spray_s = time.monotonic() - started
    # a few names get their guess; then the address waits, whatever names and headers come next
    assert codes[:2 * MAX_FAILURES] == [401] * (2 * MAX_FAILURES) and 429 in codes, codes
    assert codes.count(401) <= 2 * MAX_FAILURES + expired_waits(spray_s), (codes, spray_s)
    assert {d for _, d in s.audit("login-failed")} == {"127.0.0.1"}
    with s.client("127.0.0.3") as bob:  # another machine is not slowed
        assert log_in(bob, "bob", PASSWORD).status_code == 303


def test_revoked_tokens_new_passwords_and_disabled_or_removed_reviewers_end_access(station, monkeypatch, capsys):
    s = station()
    spool = ["--spool", str(s.rs.root)]
    with s.client("127.0.0.2") as alice:
        assert log_in(alice, "alice", PASSWORD).status_code == 303
        assert main(["review", "add-token", "alice", *spool]) == 0
        out, err = capsys.readouterr()
        token, token_id = out.strip(), re.search(r"token id ([0-9a-f]{12})", err).group(1)
        api = {"Authorization": f"Bearer {token}"}
        assert alice.get("/api/worklist", headers=api).status_code == 200
        assert main(["review", "list-tokens", *spool]) == 0
        listing = capsys.readouterr().out
        assert token_id in listing and token not in listing
        assert main(["review", "revoke-token", token_id[:8], *spool]) == 0
        assert f"token {token_id} of alice revoked" in capsys.readouterr().out
        assert alice.get("/api/worklist", headers=api).status_code == 401
        assert main(["review", "revoke-token", token_id, *spool]) == 2  # gone
        assert f"no token with id {token_id}" in capsys.readouterr().err

        # a new password ends the open session and every token
        assert main(["review", "add-token", "alice", *spool]) == 0
        api = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
        monkeypatch.setattr(sys, "stdin", io.StringIO("a brand new passphrase\n"))
        assert main(["review", "set-password", "alice", "--password-stdin", *spool]) == 0
        assert "1 session(s) and 1 API token(s) ended" in capsys.readouterr().out
        page = alice.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert alice.get("/api/worklist", headers=api).status_code == 401
        assert log_in(alice, "alice", PASSWORD).status_code == 401
        assert log_in(alice, "alice", "a brand new passphrase").status_code == 303

        # alice signs one report, then is disabled: session and token end, and she cannot log in
        uid = s.rs.ai_uids[0]
        assert main(["review", "add-token", "alice", *spool]) == 0
        api = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
        assert alice.post(f"/api/reports/{uid}/sign", json={"text": "no acute finding"}, headers=api).status_code == 201
        assert main(["review", "disable-user", "alice", *spool]) == 0
        assert alice.get("/").status_code == 303
        assert alice.get("/api/worklist", headers=api).status_code == 401
        assert log_in(alice, "alice", "a brand new passphrase").status_code == 401
        assert main(["review", "list-users", *spool]) == 0
        users = capsys.readouterr().out
        assert re.search(r"^alice\s+Doe\^Alice\s+disabled\s+0\s", users, re.M) and "$argon2" not in users
        assert main(["review", "enable-user", "alice", *spool]) == 0
        assert log_in(alice, "alice", "a brand new passphrase").status_code == 303

        # removed for good: no way in, and her signature stays hers
        assert main(["review", "remove-user", "alice", *spool]) == 0
        capsys.readouterr()
        assert alice.get("/").status_code == 303
        assert log_in(alice, "alice", "a brand new passphrase").status_code == 401
    assert main(["review", "enable-user", "alice", *spool]) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("someone else's password\n"))
    assert main(["review", "add-user", "alice", "--name", "Other^Alice", "--password-stdin", *spool]) == 2
    assert "was removed" in capsys.readouterr().err
    assert main(["review", "list-users", *spool]) == 0
    assert re.search(r"^alice\s+Doe\^Alice\s+removed\s", capsys.readouterr().out, re.M)
    (signature,) = s.rs.store.signatures(uid)
    assert signature.username == "alice"
    actions = [a for a, in s.rs.store.db.rows("SELECT action FROM review_audit WHERE target='alice'")]
    for action in ("revoke-token", "set-password", "disable-user", "enable-user", "remove-user"):
        assert action in actions


def test_pages_show_only_their_own_messages(client):
    login(client)
    uid = client.rs.ai_uids[0]
    phish = "<script>alert(1)</script>Your session expired: call 555-0100 and give your password"
    for page in (client.get(f"/reports/{uid}", params={"message": phish}).text, client.get("/", params={"done": phish}).text,
                 client.get("/login", params={"message": phish}).text):
        assert "555-0100" not in page and "session expired" not in page
    assert 'id="message">signed<' in client.get(f"/reports/{uid}?message=signed").text
    assert "rejected; no more reports waiting" in client.get("/?done=rejected").text


def test_a_station_whose_configuration_does_not_enable_review_says_so(station):
    disabled = station()
    wait_for(lambda: "[review] enabled is false" in disabled.process.log_text(), 60, "the warning")
    assert "2 report(s) waiting now" in disabled.process.log_text()
    enabled = station(enabled=True)
    assert "enabled is false" not in enabled.process.log_text()


def test_a_station_upgraded_in_place_keeps_its_reviewers_tokens_and_sessions(tmp_path):
    """A journal written by the first release (its review tables as they were) opens with this one."""
    from argon2 import PasswordHasher

    from medblip_dicom.integrations.review.accounts import Accounts, token_id
    from medblip_dicom.integrations.review.db import ReviewDatabase

    path = tmp_path / "journal.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE review_users (username TEXT PRIMARY KEY, person_name TEXT NOT NULL,
                                   password_hash TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE review_tokens (token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE review_sessions (id_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
                                      created_at REAL NOT NULL, last_seen REAL NOT NULL);
        CREATE TABLE review_throttle (login TEXT PRIMARY KEY, failures INTEGER NOT NULL, blocked_until REAL NOT NULL);
    """)
    token = "an-old-token-made-by-the-first-release"
    old.execute("INSERT INTO review_users VALUES ('carol', 'Poe^Carol', ?, 1.0)", (PasswordHasher().hash(PASSWORD),))
    old.execute("INSERT INTO review_tokens VALUES (?, 'carol', 2.0)", (hashlib.sha256(token.encode()).hexdigest(),))
    old.execute("INSERT INTO review_throttle VALUES ('carol', 9, 1e12)")
    old.commit()
    old.close()
    for _ in range(2):  # opening twice changes nothing more
        db = ReviewDatabase(tmp_path)
        accounts = Accounts(db)
        assert accounts.user_for_token(token).username == "carol"
        assert [(t.id, t.username) for t in accounts.list_tokens()] == [(token_id(token), "carol")]
        assert [(u.username, u.state, u.tokens) for u in accounts.list_users()] == [("carol", "enabled", 1)]
        assert accounts.authenticate("carol", PASSWORD, "127.0.0.2").person_name == "Poe^Carol"
        db.close()


def test_the_throttle_rules_over_time(tmp_path):
    """A name under a distributed attack gives each failed address one guess; failures are forgotten
    after a quiet while; an IPv6 client is one /64, whatever address it takes in it."""
    from medblip_dicom.integrations.review.db import ReviewDatabase
    from medblip_dicom.integrations.review.throttle import FORGET_S, LoginThrottle, Throttled, client_key

    sqlite3.connect(tmp_path / "journal.sqlite").close()
    db = ReviewDatabase(tmp_path)
    now = [1000.0]
    throttle = LoginThrottle(db, max_failures=MAX_FAILURES, clock=lambda: now[0])
    try:
        throttle.reserve("alice", "10.0.0.1")  # one wrong guess from a machine
        for i in range(throttle.alarm):  # then a botnet, one guess per address
            throttle.reserve("alice", f"10.1.{i // 250}.{i % 250}")
        with pytest.raises(Throttled):  # under attack: the machine that failed once now waits
            throttle.reserve("alice", "10.0.0.1")
        throttle.reserve("alice", "10.0.0.2")  # a machine that never failed still gets its guess
        throttle.reserve("bob", "10.0.0.1")  # and other names are not affected
        now[0] += FORGET_S + 1
        for _ in range(MAX_FAILURES):  # a quiet quarter of an hour later, everything is forgotten
            throttle.reserve("alice", "10.0.0.1")
        with pytest.raises(Throttled):
            throttle.reserve("alice", "10.0.0.1")
    finally:
        db.close()
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::7") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
