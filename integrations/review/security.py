"""Sessions and CSRF: the state behind the two authentication dependencies of :mod:`.deps`.

- Pages: a server-side session (table ``review_sessions``; the cookie holds a random id, the table
  its SHA-256) with an idle timeout; the cookie is HttpOnly, SameSite=Strict, and Secure under
  TLS. Without a live session a page redirects to ``/login`` (:data:`~.deps.PageSession`). A
  session lives only while its reviewer is enabled and has the credential epoch the session was
  made at (a new password, disabling or removing the reviewer ends it: :class:`~.accounts.Accounts`).
- Forms: every form carries the session's CSRF token (the login form a pre-session one, doubled in
  a cookie); a POST without the right token is refused with 403 (:func:`check_csrf`).
- API: ``Authorization: Bearer TOKEN`` (:meth:`~.accounts.Accounts.add_token`); 401 otherwise
  (:data:`~.deps.ApiUser`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException

from medblip_dicom.integrations.review.accounts import User
from medblip_dicom.integrations.review.db import ReviewDatabase

SESSION_COOKIE = "medblip_review_session"
LOGIN_CSRF_COOKIE = "medblip_review_login"


@dataclass(frozen=True)
class Session:
    """A live page session: its reviewer and the CSRF token its forms carry."""

    user: User
    csrf: str


class Sessions:
    """Server-side sessions with an idle timeout (in the journal: they outlive a restart)."""

    def __init__(self, db: ReviewDatabase, *, idle_s: float) -> None:
        self.db = db
        self.idle_s = idle_s

    def create(self, user: User) -> tuple[str, str]:
        """A new session for `user`: returns (cookie value, CSRF token)."""
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        with self.db.write() as db:
            db.execute("DELETE FROM review_sessions WHERE last_seen<?", (now - self.idle_s,))
            db.execute("INSERT INTO review_sessions (id_sha256, username, csrf, created_at, last_seen, epoch) "
                       "VALUES (?,?,?,?,?,?)", (_sha(session_id), user.username, csrf, now, now, user.epoch))
        return session_id, csrf

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this cookie (its idle clock restarts), or None."""
        if not session_id:
            return None
        now = time.time()
        rows = self.db.rows("SELECT s.username, s.csrf, s.last_seen, u.person_name, u.epoch FROM review_sessions s "
                            "JOIN review_users u ON u.username=s.username WHERE s.id_sha256=? AND u.enabled=1 "
                            "AND u.epoch=s.epoch", (_sha(session_id),))
        if not rows or now - float(rows[0][2]) > self.idle_s:
            self.end(session_id)
            return None
        with self.db.write() as db:
            db.execute("UPDATE review_sessions SET last_seen=? WHERE id_sha256=?", (now, _sha(session_id)))
        return Session(User(rows[0][0], rows[0][3], int(rows[0][4])), rows[0][1])

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self.db.write() as db:
                db.execute("DELETE FROM review_sessions WHERE id_sha256=?", (_sha(session_id),))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_csrf(expected: str | None, given: str | None) -> None:
    """403 unless the form's token matches (constant-time comparison)."""
    if not expected or not given or not secrets.compare_digest(str(expected), str(given)):
        raise HTTPException(status_code=403, detail="the form's CSRF token is missing or wrong; reload the page")

