"""Who holds a job: owner tokens and whether their holder is still alive.

Every open :class:`~medblip_dicom.integrations.spool.Spool` has an owner token ``<pid>:<12 hex>``;
the jobs it claims carry it, and the files it writes into ``tmp/`` and ``inputs/`` start with its
*file tag* (the token with ``-`` for ``:``). A claim or a file whose owner is gone (its process
exited, or the spool in this process was closed) may be taken back: by recovery at start, or
while running (:meth:`Spool.claims_of_dead_owners`).
"""

from __future__ import annotations

import os
import re
import threading
import uuid

from medblip_dicom.fileio import pid_alive

#: Owner tokens of the spools open in this process (a token not here and not of a live process is stale).
_LIVE: set[str] = set()
_LOCK = threading.Lock()
_OWNED_FILE = re.compile(r"^(\d+)-([0-9a-f]{12})-")


def new_owner() -> str:
    """A fresh owner token for this process, registered as alive until :func:`retire`."""
    owner = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
    with _LOCK:
        _LIVE.add(owner)
    return owner


def retire(owner: str) -> None:
    """The spool holding `owner` is closed: its claims and files count as abandoned from now on."""
    with _LOCK:
        _LIVE.discard(owner)


def file_tag(owner: str) -> str:
    """Prefix of the files an owner writes (``<pid>-<12 hex>``)."""
    return owner.replace(":", "-")


def owner_alive(owner: str) -> bool:
    """True while the spool instance behind `owner` may still be using what it claimed."""
    with _LOCK:
        if owner in _LIVE:
            return True
    try:
        pid = int(owner.split(":", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # this process, but an instance that is closed
    return pid_alive(pid)


def file_owner(name: str) -> str | None:
    """The owner token a spool file name carries, or None for a name of unknown origin."""
    match = _OWNED_FILE.match(name)
    return f"{match.group(1)}:{match.group(2)}" if match else None
