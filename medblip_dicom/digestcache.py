"""A cache of weights digests, so that loading a model does not hash its weights at every start.

The weights digest (:func:`medblip_dicom.captioner.weights_digest`) reads every byte of every
tensor: ~1 GB for BLIP-base, seconds of a command that captions one file in about three. It is
cached per *fingerprint* of the model's weight files: for each ``*.safetensors`` file of the
directory, its resolved path, size, modification and status-change times (ns) and inode, and a
SHA-256 of its safetensors header (which lists every tensor's name, dtype, shape and offsets),
plus the versions of transformers and of the digest itself. Rewriting, replacing (by rename),
touching or even ``chmod``-ing any weights file changes the fingerprint, and the digest is
computed again.

Entries are small JSON files under ``$MEDBLIP_CACHE_DIR`` (default
``$XDG_CACHE_HOME/medblip/digests`` or ``~/.cache/medblip/digests``), written atomically. A cache
that cannot be read or written only costs the time of computing the digest (logged at debug).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from medblip_dicom.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

#: Bump when the digest's definition changes: old entries then no longer match.
DIGEST_VERSION = "state-dict-sha256/1"
_MAX_HEADER = 100 << 20


def cache_dir() -> Path:
    """Where entries live (see the module docstring)."""
    explicit = os.environ.get("MEDBLIP_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "digests"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medblip" / "digests"


def _header_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size <= _MAX_HEADER:
            raise ValueError(f"{path} has no plausible safetensors header")
        return hashlib.sha256(fh.read(size)).hexdigest()


def fingerprint(directory: str | os.PathLike[str]) -> str | None:
    """The fingerprint of a model directory's weight files; None when it has none or one is unreadable."""
    folder = Path(directory)
    try:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(".safetensors"))
    except OSError:
        return None
    if not files:
        return None
    try:
        import transformers

        parts = [DIGEST_VERSION, f"transformers {transformers.__version__}"]
        for path in files:
            real = path.resolve()
            st = real.stat()
            parts.append(f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{_header_sha256(real)}")
    except (OSError, ValueError) as exc:
        logger.debug("no weights fingerprint for %s (%s)", folder, exc)
        return None
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def lookup(key: str | None) -> str | None:
    """The cached digest for a fingerprint, or None."""
    if key is None:
        return None
    try:
        entry = json.loads((cache_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    digest = entry.get("weights_sha256") if isinstance(entry, dict) else None
    if isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return digest
    return None


def store(key: str | None, digest: str, source: str) -> None:
    """Remember `digest` for a fingerprint (best effort)."""
    if key is None:
        return
    entry = {"weights_sha256": digest, "source": source, "digest": DIGEST_VERSION}
    try:
        atomic_write_bytes(cache_dir() / f"{key}.json", json.dumps(entry).encode())
    except OSError as exc:
        logger.debug("cannot cache the weights digest in %s (%s)", cache_dir(), exc)
