"""What lies in the watch folder's inbox, opened without ever following a link out of it.

The inbox is a folder other people write into, so a name in it proves nothing about what it
points to. :func:`open_entry` opens ``INBOX/<rel>`` one component at a time, relative to the folder
above it and with ``O_NOFOLLOW``, so that neither the file nor any folder above it may be a
symbolic link, not even one swapped in between a check and the open: what is opened lies in the
inbox. It opens with ``O_NONBLOCK`` (a FIFO cannot hang the watcher) and then checks the open file
itself (``fstat``): only a regular file with one name is an input. Everything else is an
:class:`InboxEntryRefused`, which :func:`refuse_entry` puts aside with a reason file, never reading
what it points to.

:class:`FileIdentity` is what must not change between reading an input and removing it from the
inbox: a writer that changed the file since it was read still owns it (:mod:`.watch`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_module
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medblip_dicom.errors import SourceError
from medblip_dicom.fileio import atomic_write_bytes, fsync_dir

logger = logging.getLogger(__name__)

#: How inputs are opened: read-only, never through a link, never blocking, never a controlling terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

SYMLINK, SPECIAL, HARDLINK = "symbolic link", "not a regular file", "hard link"

_WHAT_TO_DO = "copy or move the file itself into the inbox"


class InboxEntryRefused(SourceError):
    """An inbox entry that is never taken: a symbolic link (the entry or a folder above it), something
    that is not a regular file (FIFO, socket, device), or a file with more than one name (hard link).

    ``source`` is the entry's path relative to the inbox (the link itself, when a folder above the
    file is the link); ``kind`` is one of :data:`SYMLINK`, :data:`SPECIAL`, :data:`HARDLINK`.
    """

    def __init__(self, source: str, reason: str, kind: str = SPECIAL) -> None:
        super().__init__(source, reason)
        self.kind = kind

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.source, self.reason, self.kind))


class InboxEntryChanged(SourceError):
    """An input changed (was written, truncated or replaced) while it was being read: its writer is not
    done; it stays in the inbox and is taken again once it holds still."""


@dataclass(frozen=True)
class FileIdentity:
    """Which file, and which version of it: device, inode, size and modification time."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _kind_of(mode: int) -> str:
    if stat_module.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat_module.S_ISSOCK(mode):
        return "a socket"
    if stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        return "a device"
    if stat_module.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _refused_link(rel: str) -> InboxEntryRefused:
    return InboxEntryRefused(rel, "a symbolic link: not followed, nothing was read from where it points; "
                             + _WHAT_TO_DO, SYMLINK)


def _check_opened(rel: str, st: os.stat_result) -> None:
    """Refuse an open entry that is not a regular file with exactly one name."""
    if stat_module.S_ISLNK(st.st_mode):
        raise _refused_link(rel)
    if not stat_module.S_ISREG(st.st_mode):
        raise InboxEntryRefused(rel, f"{_kind_of(st.st_mode)}, not a regular file: never opened for reading; "
                                + _WHAT_TO_DO, SPECIAL)
    if st.st_nlink > 1:
        raise InboxEntryRefused(
            rel, f"a file with {st.st_nlink} names (a hard link; another name may lie outside the inbox, and its "
            "owner can still change it): not read; " + _WHAT_TO_DO, HARDLINK)


def _entry_stat(name: str, dir_fd: int) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def split_relative(rel: str | PurePosixPath) -> tuple[str, ...]:
    """The components of a path relative to the inbox; ValueError when it could leave the inbox."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{rel!s} is not a path inside the inbox")
    return parts


def open_entry(inbox: Path, rel: str | PurePosixPath) -> tuple[int, os.stat_result]:
    """Open ``inbox/rel`` for reading without following a link anywhere beneath `inbox`.

    Returns the open file descriptor (the caller closes it) and its ``fstat``. The inbox folder
    itself may be a link (the administrator's choice); nothing beneath it may be.

    Raises :class:`InboxEntryRefused` for a link, a non-regular file or a hard-linked file (nothing is
    read then, and a FIFO or device is never opened), FileNotFoundError when the entry is gone, and
    other OSErrors (permissions, a share that went away) as they come.
    """
    parts = split_relative(rel)
    dir_fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for depth, part in enumerate(parts[:-1]):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    with contextlib.suppress(OSError):
                        if stat_module.S_ISLNK(_entry_stat(part, dir_fd).st_mode):
                            raise _refused_link("/".join(parts[:depth + 1])) from None
                    raise FileNotFoundError(errno.ENOENT, "no longer a folder", "/".join(parts[:depth + 1])) from None
                raise
            os.close(dir_fd)
            dir_fd = child
        rel_text = "/".join(parts)
        _check_opened(rel_text, _entry_stat(parts[-1], dir_fd))  # a FIFO or a device is never opened
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link swapped in since the check above
                raise _refused_link(rel_text) from None
            raise
        try:
            st = os.fstat(fd)
            _check_opened(rel_text, st)  # what was opened, whatever the name points to now
        except BaseException:
            os.close(fd)
            raise
        return fd, st
    finally:
        os.close(dir_fd)


def _free_name(folder: Path, rel: str, tag: str) -> Path:
    """``folder/rel``, or ``stem-<tag>[-n]suffix`` beside it, free for the entry and its reason file."""
    path = folder / rel
    candidate, n = path, 0
    while candidate.exists() or candidate.is_symlink() or candidate.with_name(candidate.name + ".reason.txt").exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{tag}{'' if n == 1 else f'-{n}'}{path.suffix}")
    return candidate


def refusal_text(refusal: InboxEntryRefused, *, kept: bool) -> str:
    """The reason file of a refused entry: what it was and what to do; never where a link points."""
    where = "the entry itself is kept beside this file" if kept else "the entry was removed from the inbox"
    return (f"state: refused\norigin: watch\nerror: {type(refusal).__name__}\nkind: {refusal.kind}\n"
            f"message: {refusal.reason}\nnote: {where}\n"
            f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime())}\n")


def refuse_entry(inbox: Path, failed_dir: Path, refusal: InboxEntryRefused) -> Path | None:
    """Put a refused entry aside with a reason file, without reading it or anything it points to.

    A link or a FIFO is moved (renamed: the link itself, not its target) to ``failed_dir/<rel>``,
    so whoever looks can see what was dropped, by whom and when. A hard-linked file is removed from
    the inbox instead (its other name keeps the data): a name kept in ``failed/`` would leave someone
    else's file reachable from a folder its owner does not control. Returns the reason file, or
    None when the entry changed since it was refused (it is looked at again). Raises OSError.
    """
    src = inbox / refusal.source
    st = src.lstat()
    if refusal.kind == SYMLINK and not stat_module.S_ISLNK(st.st_mode):
        return None
    if refusal.kind == HARDLINK and not (stat_module.S_ISREG(st.st_mode) and st.st_nlink > 1):
        return None
    if refusal.kind == SPECIAL and stat_module.S_ISREG(st.st_mode):
        return None
    if failed_dir.is_symlink():  # planted by someone who can write into the inbox: never follow it
        raise NotADirectoryError(errno.ENOTDIR, "the failed folder is a symbolic link", str(failed_dir))
    target = _free_name(failed_dir, refusal.source, "refused")
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = refusal.kind != HARDLINK
    if kept:
        try:
            os.rename(src, target)  # rename never follows a link: the link itself moves
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            os.unlink(src)  # failed/ on another file system: a link cannot be moved there
            kept = False
        fsync_dir(target.parent)
    else:
        os.unlink(src)
    fsync_dir(src.parent)
    return atomic_write_bytes(target.with_name(target.name + ".reason.txt"), refusal_text(refusal, kept=kept).encode())
