"""Durable writes: whole lines appended with one write and an fsync, synced directories."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from session.errors import describe_os_error


def fsync_directory(directory: Path) -> None:
    """Make a new or renamed entry in directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ends_with_newline(fd: int) -> bool:
    """Whether the file open at fd is empty or ends in a newline (fd must be readable)."""
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def append_record(fd: int, data: bytes, path: Path) -> None:
    """Append data with ONE write, then fsync; on any failure cut the file back and raise.

    The file must be open with O_APPEND and written by this one writer, so whatever
    this call added sits at the end of the file and truncating it away is exact.
    """
    try:
        written = os.write(fd, data)
    except OSError as error:
        # A failed write(2) wrote nothing: the file is as it was.
        raise describe_os_error("append to the session log", path, error) from None
    try:
        if written != len(data):
            # A short write to a regular file means the disk filled up part-way.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError as error:
        _cut_back(fd, written)
        raise describe_os_error("append to the session log", path, error) from None


def _cut_back(fd: int, added: int) -> None:
    """Remove the last `added` bytes; if even that fails, the reader skips the torn line."""
    try:
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - added))
        os.fsync(fd)
    except OSError:
        pass


def open_for_append(path: Path, *, create: bool, shown_as: Path | None = None) -> int:
    """Open a log for appending (and reading its last byte); create it exclusively if asked.

    Errors name `shown_as` if given (the log a temporary file will become), else `path`.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        return os.open(path, flags, 0o644)
    except OSError as error:
        raise describe_os_error("open the session log", shown_as or path, error) from None


def publish_new_file(temporary: Path, final: Path) -> None:
    """Give the complete file at `temporary` the name `final`, which must not exist yet; drop `temporary`.

    A hard link fails if `final` exists (FileExistsError), as O_EXCL would. Where the
    file system has no hard links, a rename does it (an existing `final` is refused first).
    A crash between the link and the unlink leaves `temporary` as a second name; readers
    never look at it.
    """
    try:
        os.link(temporary, final)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        if final.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from None
        os.rename(temporary, final)
        return
    with contextlib.suppress(OSError):
        temporary.unlink()  # if it stays, it is only a second name of the same file
