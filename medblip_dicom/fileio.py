"""Small durable-file helpers shared by the report writer, training and the services.

Every write goes to a temporary name in the target folder (``.tmp-...``), is fsynced and renamed
into place, and the folder is fsynced, so a reader or a restarted service never sees a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[BinaryIO]:
    """Yield a file that becomes `target` only once it is complete and on disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `target` via a temporary file in the same folder, fsync, and rename."""
    target = Path(target)
    with _atomic_file(target) as fh:
        fh.write(data)
    return target


def atomic_copy(src: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy `src` to `target` so that a reader sees the whole file or nothing."""
    target = Path(target)
    with open(src, "rb") as fin, _atomic_file(target) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return target


def atomic_move(src: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move `src` to `target`: a rename on one file system, else copy + fsync + rename + unlink."""
    src, target = Path(src), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        atomic_copy(src, target)
        os.unlink(src)
    fsync_dir(target.parent)
    fsync_dir(src.parent)
    return target
