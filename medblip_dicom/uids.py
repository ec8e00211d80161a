"""Deterministic DICOM UIDs: the same inputs always give the same UID.

pydicom's ``generate_uid(prefix=None, ...)`` ignores its entropy sources and returns a random
UUID-derived UID, so it cannot make reports idempotent. :func:`stable_uid` hashes its parts with
SHA-256 into a name-based UUID (RFC 4122 version 5 layout) and writes it under the ``2.25`` root
(PS3.5 B.2), which needs no registered organisation prefix and is at most 44 characters long.
"""

from __future__ import annotations

import hashlib
import uuid


def stable_uid(*parts: str) -> str:
    """Return ``2.25.<integer>`` derived from `parts` (order matters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"
