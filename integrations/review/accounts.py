"""Reviewers: accounts with argon2 password hashes, API tokens, revocation and throttled logins.

Passwords are hashed with argon2id (argon2-cffi's defaults) and never stored or logged in clear;
API tokens are random (256 bits) and only their SHA-256 is stored, so the table leaks nothing usable.
A token's id (:func:`token_id`, the first 12 hex digits of that SHA-256) names it in listings and
revocation without revealing it.

A new password, a disabled reviewer or a removed one ends all of that reviewer's sessions and API
tokens at once: the rows go, and the reviewer's ``epoch`` goes up, so a session that a login in
flight creates with the old credentials is refused too (:class:`~.security.Sessions`). A removed
reviewer keeps a disabled row under its login name, so that its signatures stay attributable; the
name cannot be given to someone else.

Logins are throttled by :mod:`.throttle` (per name and client address, per address, and a per-name
alarm) and at most a few passwords are hashed at once.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from medblip_dicom.dicomtext import TextError, dicom_text
from medblip_dicom.errors import MedblipError
from medblip_dicom.integrations.review.db import ReviewDatabase
from medblip_dicom.integrations.review.throttle import (  # noqa: F401 - Throttled, Busy: what a login may raise
    Busy, HashGate, LoginRefused, LoginThrottle, Throttled, client_key,
)

logger = logging.getLogger(__name__)

_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TOKEN_ID = re.compile(r"^[0-9a-f]{6,64}$")
_HASHER = PasswordHasher()
#: A hash to verify against when the login name does not exist or is disabled (the same work either way).
_DUMMY_HASH = _HASHER.hash("not a password of anyone")
#: The password hash of a removed reviewer: not an argon2 hash, so nothing ever matches it.
_REMOVED = "!removed"
#: Password hashes running at once in one station (64 MiB each with argon2-cffi's defaults).
MAX_CONCURRENT_HASHES = 2


class AccountError(MedblipError, ValueError):
    """An account cannot be created or used as asked."""


@dataclass(frozen=True)
class User:
    """A reviewer: login name, DICOM person name (``Last^First``) and the credential epoch it was read at."""

    username: str
    person_name: str
    epoch: int = 0


@dataclass(frozen=True)
class UserInfo:
    """One reviewer as listed: never its password hash."""

    username: str
    person_name: str
    state: str  # "enabled", "disabled" or "removed"
    tokens: int
    last_login: float | None
    created_at: float


@dataclass(frozen=True)
class TokenInfo:
    """One API token as listed: its id, never the token."""

    id: str
    username: str
    created_at: float


def check_person_name(name: str) -> str:
    """A DICOM PN for the VerifyingObserverName: ``Last^First``, up to three component groups
    (``Yamada^Tarou=山田^太郎``) of at most 64 characters and five components each. The DICOM text
    rule (:func:`~medblip_dicom.dicomtext.dicom_text`) keeps Unicode and refuses a control
    character, a line separator or a backslash, naming it and its position."""
    try:
        name = " ".join(dicom_text(str(name), "PN", what="the person name").split())
    except TextError as exc:
        raise AccountError(str(exc)) from None
    groups = name.split("=")
    if not name or len(groups) > 3 or any(group.count("^") > 4 for group in groups):
        raise AccountError(f"{name!r} is not a DICOM person name such as 'Doe^Jane'")
    return name


def token_id(token: str) -> str:
    """The public id of an API token: the first 12 hex digits of its SHA-256."""
    return _sha(token)[:12]


class Accounts:
    """The reviewers of one spool (tables ``review_users``, ``review_tokens``, ``review_login_failures``)."""

    def __init__(self, db: ReviewDatabase, *, max_failures: int = 5,
                 max_concurrent_hashes: int = MAX_CONCURRENT_HASHES) -> None:
        self.db = db
        self.max_failures = max_failures
        self.throttle = LoginThrottle(db, max_failures=max_failures)
        self.hashes = HashGate(max_concurrent_hashes)

    # -- reviewers -------------------------------------------------------------------------------

    def add_user(self, username: str, person_name: str, password: str) -> User:
        """Create a reviewer, or update one (a new password: its sessions and tokens end)."""
        if not _USERNAME.match(username or ""):
            raise AccountError(f"{username!r} is not a login name (1 to 64 letters, digits, '.', '_' or '-')")
        person = check_person_name(person_name)
        password_hash = _hash_password(password)
        with self.db.write() as db:
            row = db.execute("SELECT removed_at FROM review_users WHERE username=?", (username,)).fetchone()
            if row is not None and row[0] is not None:
                raise AccountError(_removed_message(username))
            db.execute("INSERT INTO review_users (username, person_name, password_hash, created_at) VALUES (?,?,?,?) "
                       "ON CONFLICT(username) DO UPDATE SET person_name=excluded.person_name, "
                       "password_hash=excluded.password_hash, epoch=epoch+1",
                       (username, person, password_hash, time.time()))
            if row is not None:
                _end_access(db, username)
            self.db.audit(None, "add-user" if row is None else "update-user", username, None, db)
        return User(username, person)

    def set_password(self, username: str, password: str) -> tuple[int, int]:
        """A new password for `username`; returns (sessions, tokens) ended."""
        password_hash = _hash_password(password)
        with self.db.write() as db:
            self._existing(db, username)
            db.execute("UPDATE review_users SET password_hash=?, epoch=epoch+1 WHERE username=?", (password_hash, username))
            ended = _end_access(db, username)
            self.db.audit(None, "set-password", username, None, db)
        return ended

    def disable(self, username: str) -> tuple[int, int]:
        """Stop `username` from logging in or using the API; returns (sessions, tokens) ended."""
        with self.db.write() as db:
            self._existing(db, username)
            db.execute("UPDATE review_users SET enabled=0, epoch=epoch+1 WHERE username=?", (username,))
            ended = _end_access(db, username)
            self.db.audit(None, "disable-user", username, None, db)
        return ended

    def enable(self, username: str) -> None:
        """Let a disabled reviewer log in again (with the same password; tokens must be made anew)."""
        with self.db.write() as db:
            self._existing(db, username)
            db.execute("UPDATE review_users SET enabled=1 WHERE username=?", (username,))
            self.db.audit(None, "enable-user", username, None, db)

    def remove(self, username: str) -> tuple[int, int]:
        """Remove a reviewer for good: disabled, password hash erased, sessions and tokens ended; the
        row stays (name and DICOM person name), so that its signatures stay attributable."""
        with self.db.write() as db:
            self._existing(db, username)
            db.execute("UPDATE review_users SET enabled=0, removed_at=?, password_hash=?, epoch=epoch+1 "
                       "WHERE username=?", (time.time(), _REMOVED, username))
            ended = _end_access(db, username)
            self.db.audit(None, "remove-user", username, None, db)
        return ended

    def user(self, username: str) -> User | None:
        """The enabled reviewer of this login name, or None."""
        rows = self.db.rows("SELECT username, person_name, epoch FROM review_users WHERE username=? AND enabled=1",
                            (username,))
        return User(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def list_users(self) -> list[UserInfo]:
        """Every reviewer, removed ones included, by login name."""
        rows = self.db.rows("SELECT u.username, u.person_name, u.enabled, u.removed_at, u.last_login, u.created_at, "
                            "(SELECT COUNT(*) FROM review_tokens t WHERE t.username=u.username) "
                            "FROM review_users u ORDER BY u.username")
        return [UserInfo(r[0], r[1], "removed" if r[3] is not None else "enabled" if r[2] else "disabled", int(r[6]),
                         r[4], float(r[5])) for r in rows]

    def _existing(self, db: sqlite3.Connection, username: str) -> None:
        row = db.execute("SELECT removed_at FROM review_users WHERE username=?", (username,)).fetchone()
        if row is None:
            raise AccountError(f"no reviewer {username!r}; list them with medblip review list-users")
        if row[0] is not None:
            raise AccountError(_removed_message(username))

    # -- API tokens ------------------------------------------------------------------------------

    def add_token(self, username: str) -> str:
        """A new API token for `username` (shown once; only its hash is kept; :func:`token_id` names it)."""
        if self.user(username) is None:
            exists = bool(self.db.rows("SELECT 1 FROM review_users WHERE username=?", (username,)))
            raise AccountError(f"reviewer {username!r} is disabled; enable it first with medblip review enable-user"
                               if exists else f"no reviewer {username!r}; add it first with medblip review add-user")
        token = secrets.token_urlsafe(32)
        with self.db.write() as db:
            db.execute("INSERT INTO review_tokens (token_sha256, username, created_at) VALUES (?,?,?)",
                       (_sha(token), username, time.time()))
            self.db.audit(None, "add-token", username, token_id(token), db)
        return token

    def list_tokens(self, username: str | None = None) -> list[TokenInfo]:
        """The API tokens (of `username`, or all), oldest first."""
        where, args = ("WHERE username=?", (username,)) if username else ("", ())
        rows = self.db.rows(f"SELECT token_sha256, username, created_at FROM review_tokens {where} "
                            "ORDER BY created_at", args)
        return [TokenInfo(str(r[0])[:12], r[1], float(r[2])) for r in rows]

    def revoke_token(self, token_id_prefix: str) -> TokenInfo:
        """Revoke the one token whose id starts with `token_id_prefix` (at least 6 hex digits)."""
        prefix = str(token_id_prefix).strip().lower()
        if not _TOKEN_ID.match(prefix):
            raise AccountError(f"{token_id_prefix!r} is not a token id (6 to 12 hex digits, as list-tokens shows)")
        with self.db.write() as db:
            rows = db.execute("SELECT token_sha256, username, created_at FROM review_tokens WHERE "
                              "substr(token_sha256, 1, ?)=?", (len(prefix), prefix)).fetchall()
            if len(rows) != 1:
                raise AccountError(f"no token with id {prefix}; see medblip review list-tokens" if not rows else
                                   f"{len(rows)} tokens have ids starting with {prefix}; give more digits")
            db.execute("DELETE FROM review_tokens WHERE token_sha256=?", (rows[0][0],))
            self.db.audit(None, "revoke-token", rows[0][1], str(rows[0][0])[:12], db)
        return TokenInfo(str(rows[0][0])[:12], rows[0][1], float(rows[0][2]))

    def user_for_token(self, token: str) -> User | None:
        """The enabled reviewer holding this API token, or None."""
        rows = self.db.rows("SELECT u.username, u.person_name, u.epoch FROM review_tokens t JOIN review_users u "
                            "ON u.username=t.username WHERE t.token_sha256=? AND u.enabled=1", (_sha(token),))
        return User(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    # -- logging in ------------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, client: str | None = "local") -> User | None:
        """The user when the password is right, else None.

        `client` is the peer's address (throttling is per address). Raises :class:`Throttled` while
        this address waits (nothing hashed) and :class:`Busy` when too many hashes run already; the
        attempt is counted as a failure before the password is hashed, and taken back when right.
        """
        key, address = str(username)[:64], client_key(client)
        reservation = self.throttle.reserve(key, address)
        rows = self.db.rows("SELECT username, person_name, password_hash, epoch, enabled FROM review_users "
                            "WHERE username=?", (key,))
        known, found = bool(rows), [r for r in rows if r[4]]
        if reservation.blocks:
            self.db.audit(key if known else None, "login-blocked", None,
                          f"{address}: {', '.join(reservation.blocks)} limit reached")
        with self.hashes.slot():
            ok = _verify(found[0][2] if found else _DUMMY_HASH, password) and bool(found)
        with self.db.write() as db:
            if ok:  # unless the password changed or the reviewer was disabled while hashing
                ok = db.execute("UPDATE review_users SET last_login=? WHERE username=? AND epoch=? AND enabled=1",
                                (time.time(), key, int(found[0][3]))).rowcount == 1
            if ok:
                self.throttle.succeeded(reservation, db)
            self.db.audit(key if known else None, "login" if ok else "login-failed", None, address, db)
        return User(found[0][0], found[0][1], int(found[0][3])) if ok else None


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(_HASHER.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def _hash_password(password: str) -> str:
    if len(password) < 8:
        raise AccountError("the password must have at least 8 characters")
    return _HASHER.hash(password)


def _end_access(db: sqlite3.Connection, username: str) -> tuple[int, int]:
    """Delete the sessions and API tokens of `username` (inside the caller's transaction)."""
    sessions = db.execute("DELETE FROM review_sessions WHERE username=?", (username,)).rowcount
    tokens = db.execute("DELETE FROM review_tokens WHERE username=?", (username,)).rowcount
    if sessions or tokens:
        logger.info("ended %d session(s) and %d API token(s) of reviewer %s", sessions, tokens, username)
    return sessions, tokens


def _removed_message(username: str) -> str:
    return (f"reviewer {username!r} was removed; its signatures stay attributed to that name, so it cannot be "
            "used again: add the person under another login name")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
