"""Reviewers: accounts with argon2 password hashes, API tokens, and login throttling.

Passwords are hashed with argon2id (argon2-cffi's defaults) and never stored or logged in clear;
API tokens are random (256 bits) and only their SHA-256 is stored, so the table leaks nothing usable.
After ``max_failures`` wrong passwords in a row for one login name (existing or not, so that the
answer does not tell which names exist), each further try waits 2, 4, 8 ... up to 300 seconds.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from medblip_dicom.integrations.review.db import ReviewDatabase

_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HASHER = PasswordHasher()
#: A hash to verify against when the login name does not exist (the same work either way).
_DUMMY_HASH = _HASHER.hash("not a password of anyone")
MAX_BLOCK_S = 300.0


class AccountError(ValueError):
    """An account cannot be created or used as asked."""


class Throttled(AccountError):
    """Too many wrong passwords: wait ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong passwords; try again in {int(retry_after_s) + 1} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class User:
    """A reviewer: login name and DICOM person name (``Last^First``)."""

    username: str
    person_name: str


def check_person_name(name: str) -> str:
    """A DICOM PN for the VerifyingObserverName: ``Last^First`` (at most 64 characters a group)."""
    name = " ".join(str(name).split())
    if not name or "\\" in name or any(len(group) > 64 for group in name.split("=")) or name.count("^") > 4:
        raise AccountError(f"{name!r} is not a DICOM person name such as 'Doe^Jane'")
    return name


class Accounts:
    """The reviewers of one spool (tables ``review_users``, ``review_tokens``, ``review_throttle``)."""

    def __init__(self, db: ReviewDatabase, *, max_failures: int = 5) -> None:
        self.db = db
        self.max_failures = max_failures

    def add_user(self, username: str, person_name: str, password: str) -> User:
        """Create or update a reviewer (a new password replaces the old one)."""
        if not _USERNAME.match(username or ""):
            raise AccountError(f"{username!r} is not a login name (1 to 64 letters, digits, '.', '_' or '-')")
        person = check_person_name(person_name)
        if len(password) < 8:
            raise AccountError("the password must have at least 8 characters")
        with self.db.write() as db:
            db.execute("INSERT INTO review_users (username, person_name, password_hash, created_at) VALUES (?,?,?,?) "
                       "ON CONFLICT(username) DO UPDATE SET person_name=excluded.person_name, "
                       "password_hash=excluded.password_hash", (username, person, _HASHER.hash(password), time.time()))
            self.db.audit(None, "add-user", username, None, db)
        return User(username, person)

    def user(self, username: str) -> User | None:
        rows = self.db.rows("SELECT username, person_name FROM review_users WHERE username=?", (username,))
        return User(rows[0][0], rows[0][1]) if rows else None

    def add_token(self, username: str) -> str:
        """A new API token for `username` (shown once; only its hash is kept)."""
        if self.user(username) is None:
            raise AccountError(f"no reviewer {username!r}; add it first with medblip review add-user")
        token = secrets.token_urlsafe(32)
        with self.db.write() as db:
            db.execute("INSERT INTO review_tokens (token_sha256, username, created_at) VALUES (?,?,?)",
                       (_sha(token), username, time.time()))
            self.db.audit(None, "add-token", username, None, db)
        return token

    def user_for_token(self, token: str) -> User | None:
        rows = self.db.rows("SELECT u.username, u.person_name FROM review_tokens t JOIN review_users u "
                            "ON u.username=t.username WHERE t.token_sha256=?", (_sha(token),))
        return User(rows[0][0], rows[0][1]) if rows else None

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right, else None; raises :class:`Throttled` while blocked."""
        key = str(username)[:64]
        now = time.time()
        row = self.db.rows("SELECT failures, blocked_until FROM review_throttle WHERE login=?", (key,))
        if row and float(row[0][1]) > now:
            raise Throttled(float(row[0][1]) - now)
        found = self.db.rows("SELECT username, person_name, password_hash FROM review_users WHERE username=?", (key,))
        ok = False
        try:
            ok = _HASHER.verify(found[0][2] if found else _DUMMY_HASH, password) and bool(found)
        except (VerificationError, InvalidHashError):
            ok = False
        with self.db.write() as db:
            if ok:
                db.execute("DELETE FROM review_throttle WHERE login=?", (key,))
            else:
                failures = (int(row[0][0]) if row else 0) + 1
                over = failures - self.max_failures
                blocked = now + min(MAX_BLOCK_S, 2.0 ** over) if over >= 0 else 0.0
                db.execute("INSERT INTO review_throttle (login, failures, blocked_until) VALUES (?,?,?) "
                           "ON CONFLICT(login) DO UPDATE SET failures=excluded.failures, "
                           "blocked_until=excluded.blocked_until", (key, failures, blocked))
            self.db.audit(key if found else None, "login" if ok else "login-failed", None, None, db)
        return User(found[0][0], found[0][1]) if ok else None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
