"""Small durable-file helpers shared by the report writer, training and the services.

Every write goes to a temporary name in the target folder (``.tmp-<pid>-...``), is fsynced and
renamed into place, and the folder is fsynced, so a reader or a restarted service never sees a
partial file under a final name. A process killed mid-write leaves its temporary file behind;
:func:`remove_stale_temp_files` (run by the services at start) removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_TEMP_NAME = re.compile(r"^\.tmp-(\d+)-")


def _temp_prefix() -> str:
    """Temporary names carry the writer's process id, so a later start can tell abandoned ones."""
    return f".tmp-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists and has not exited.

    A zombie (exited, not yet reaped: an orphan whose new parent reaps late) counts as gone; on
    Linux its state is read from ``/proc``.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux), or it vanished just now: trust kill(0)
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"] and state != ["X"]


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files (``.tmp-<pid>-...``) that writers killed mid-write left in `folder`.

    Files of this process and of processes still alive are kept. Returns how many were removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            continue
    if removed:
        fsync_dir(folder)
    return removed


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
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), dir=target.parent)
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
