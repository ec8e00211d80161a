"""Login throttling: wrong passwords counted per client address, and a bound on concurrent hashes.

Failures are counted in the table ``review_login_failures`` under three keys (django-axes'
``[["username", "ip_address"], "ip_address"]``, plus a per-name alarm):

- **pair** (login name, client address): after ``max_failures`` wrong passwords each further try
  from that address for that name waits 2, 4, 8 ... up to 300 s. Someone else's failures never
  block a reviewer at an address that has not failed, so an outsider cannot lock her out.
- **address**: after ``address_factor * max_failures`` wrong passwords for any names, the whole
  address waits the same way (a password spray: many names, one guess each).
- **name**: a name with ``alarm_factor * max_failures`` failures from all addresses together is
  under a distributed attack; then every address that has already failed for it is blocked from its
  first wrong password. An address that has not failed still gets in with the right password.

Every attempt is counted *before* its password is hashed, in one ``BEGIN IMMEDIATE`` transaction
(serialised across threads and processes): parallel guesses are all counted, and those beyond the
limit are refused without hashing (counted as ``refused`` on the key that blocked them).
Failures are forgotten :data:`FORGET_S` after the last one; the right password clears its pair.
Login names are kept as SHA-256 (what someone types into the name field may be a password).

:class:`HashGate` bounds how many argon2 hashes run at once (64 MiB each with argon2-cffi's
defaults): beyond the bound a login waits briefly, then is answered "busy" without hashing.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from medblip_dicom.errors import MedblipError
from medblip_dicom.integrations.review.db import ReviewDatabase

logger = logging.getLogger(__name__)

#: The longest wait after wrong passwords, in seconds.
MAX_BLOCK_S = 300.0
#: The first wait once a limit is reached; each further wrong password doubles it.
FIRST_BLOCK_S = 2.0
#: Failures are forgotten this long after the last one (longer than MAX_BLOCK_S, so that one guess
#: per block never resets the count).
FORGET_S = 900.0
PAIR, ADDRESS, NAME = "pair", "address", "name"


class LoginRefused(MedblipError):
    """A login attempt that was not checked at all; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Throttled(LoginRefused):
    """Too many wrong passwords from this address (for this name, or for any): wait ``retry_after_s``."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong passwords; try again in {int(retry_after_s) + 1} s", retry_after_s)


class Busy(LoginRefused):
    """Too many logins being checked at once: the password was not checked; try again shortly."""

    def __init__(self) -> None:
        super().__init__("the station is busy checking other logins; try again in a moment", 1.0)


def client_key(host: str | None) -> str:
    """The address a client is throttled under: an IPv4 address as is, an IPv6 one by its /64
    (one site or machine holds a whole /64), anything else (a test client's name) as given."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def block_s(failures: int, limit: int) -> float:
    """How long a key with `failures` waits after its last failure (0 below `limit`)."""
    over = failures - limit
    return 0.0 if over < 0 else min(MAX_BLOCK_S, FIRST_BLOCK_S * 2.0 ** min(over, 32))


@dataclass
class Reservation:
    """One attempt counted as a failure until :meth:`LoginThrottle.succeeded` takes it back;
    ``blocks`` names the keys this attempt brought to their limit (for the audit trail)."""

    name: str
    address: str
    blocks: list[str] = field(default_factory=list)


class LoginThrottle:
    """The failure counts of one review database (module docstring for the rules)."""

    def __init__(self, db: ReviewDatabase, *, max_failures: int = 5, address_factor: int = 2,
                 alarm_factor: int = 10, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.max_failures = max_failures
        self.address_limit = address_factor * max_failures
        self.alarm = alarm_factor * max_failures
        self.clock = clock

    def reserve(self, login: str, address: str) -> Reservation:
        """Count this attempt as a failure before its password is checked.

        Raises :class:`Throttled` (and counts the attempt as refused) while the pair or the address waits.
        """
        now = self.clock()
        name = hashlib.sha256(login.encode("utf-8", "replace")).hexdigest()
        keys = {PAIR: (name, address), ADDRESS: ("", address), NAME: (name, "")}
        refusal: Throttled | None = None
        reservation = Reservation(name, address)
        with self.db.write() as db:
            db.execute("DELETE FROM review_login_failures WHERE last_failure<?", (now - FORGET_S,))
            counts = {scope: _row(db, scope, key) for scope, key in keys.items()}
            limits = self._limits(counts[NAME][0])
            waits = {scope: counts[scope][1] + block_s(counts[scope][0], limits[scope]) - now for scope in limits}
            blocking = max(waits, key=lambda scope: waits[scope])
            if waits[blocking] > 0:
                db.execute("UPDATE review_login_failures SET refused=refused+1 WHERE scope=? AND name=? AND address=?",
                           (blocking, *keys[blocking]))
                refusal = Throttled(waits[blocking])
            else:
                failures = {scope: _count_failure(db, scope, key, now) for scope, key in keys.items()}
                limits = self._limits(failures[NAME])
                reservation.blocks = [scope for scope in limits if failures[scope] >= limits[scope]]
        if refusal is not None:
            logger.debug("login refused for %.0f s: address %s over its limit", refusal.retry_after_s, address)
            raise refusal
        return reservation

    def succeeded(self, reservation: Reservation, db: sqlite3.Connection) -> None:
        """The right password (inside the caller's transaction): clear the pair's failures and take
        this attempt back from the address and the name."""
        db.execute("DELETE FROM review_login_failures WHERE scope=? AND name=? AND address=?",
                   (PAIR, reservation.name, reservation.address))
        db.execute("UPDATE review_login_failures SET failures=MAX(failures-1, 0) WHERE (scope=? AND name='' AND "
                   "address=?) OR (scope=? AND name=? AND address='')",
                   (ADDRESS, reservation.address, NAME, reservation.name))

    def _limits(self, name_failures: int) -> dict[str, int]:
        """Failures allowed for a pair and an address (a pair gets one while its name is under attack)."""
        return {PAIR: 1 if name_failures >= self.alarm else self.max_failures, ADDRESS: self.address_limit}


def _row(db: sqlite3.Connection, scope: str, key: tuple[str, str]) -> tuple[int, float]:
    row = db.execute("SELECT failures, last_failure FROM review_login_failures WHERE scope=? AND name=? AND address=?",
                     (scope, *key)).fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def _count_failure(db: sqlite3.Connection, scope: str, key: tuple[str, str], now: float) -> int:
    """One more failure on `key` (one statement, inside the caller's write transaction): the new count."""
    row = db.execute("INSERT INTO review_login_failures (scope, name, address, failures, last_failure) "
                     "VALUES (?, ?, ?, 1, ?) ON CONFLICT(scope, name, address) DO UPDATE SET "
                     "failures=failures+1, last_failure=excluded.last_failure RETURNING failures",
                     (scope, *key, now)).fetchone()
    return int(row[0])


class HashGate:
    """At most `concurrent` password hashes at once; at most `waiting` logins queue for a slot, each
    for `wait_s` at most. ``peak`` is the most that ever ran at once (for tests and the log)."""

    def __init__(self, concurrent: int = 2, *, waiting: int = 16, wait_s: float = 5.0) -> None:
        if concurrent < 1:
            raise ValueError(f"concurrent password hashes must be at least 1, got {concurrent}")
        self.concurrent = concurrent
        self.max_waiting = waiting
        self.wait_s = wait_s
        self.peak = 0
        self._slots = threading.BoundedSemaphore(concurrent)
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot while hashing; raises :class:`Busy` when none frees up in time."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise Busy()
            self._waiting += 1
        try:
            got = self._slots.acquire(timeout=self.wait_s)
        finally:
            with self._lock:
                self._waiting -= 1
        if not got:
            raise Busy()
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()
