"""Deterministic DICOM UIDs: the same inputs always give the same UID.

pydicom's ``generate_uid(prefix=None, ...)`` ignores its entropy sources and returns a random
UUID-derived UID, so it cannot make reports idempotent. :func:`stable_uid` hashes its parts with
SHA-256 into a name-based UUID (RFC 4122 version 5 layout) and writes it under the ``2.25`` root
(PS3.5 B.2), which needs no registered organisation prefix and is at most 44 characters long.

:data:`DICOM_UID` and :func:`is_dicom_uid` are the one test of "is this text a UID" for the whole
project (a UID in a URL, a request body, a received header): digits and dots, at most
:data:`UID_MAX_LENGTH` characters, so a UID can name a file or a path without escaping anything.
"""

from __future__ import annotations

import hashlib
import re
import uuid

#: A DICOM UID (PS3.5 section 9.1): components of digits separated by single dots. Leading zeros
#: in a component, which the standard forbids but some devices write, are accepted: what is
#: received must still be readable, and they cannot make a UID escape a path.
DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: The longest UID (PS3.5 section 9.1: a UI value holds at most 64 characters).
UID_MAX_LENGTH = 64


def is_dicom_uid(text: object) -> bool:
    """True when `text` is a string that is a whole DICOM UID (:data:`DICOM_UID`, at most
    :data:`UID_MAX_LENGTH` characters; a trailing newline is not part of a UID)."""
    return isinstance(text, str) and len(text) <= UID_MAX_LENGTH and DICOM_UID.fullmatch(text) is not None


def stable_uid(*parts: str) -> str:
    """Return ``2.25.<integer>`` derived from `parts` (order matters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"
