"""A content-addressed blob directory: each blob is stored once, named by its sha256."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from session.durable import fsync_directory
from session.errors import SessionStoreError, describe_os_error

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

REFRESH_AFTER_SECONDS = 600
"""A stored blob put again gets a fresh mtime if its mtime is older than this (see _refresh_if_present)."""

TEMPORARY_PREFIX = ".tmp-"
"""Names starting with this in the blob directory are unfinished writes, never blobs."""


class BlobNotFound(SessionStoreError):
    """No blob with the given sha256 is in the store."""


def is_sha256(text: object) -> bool:
    """Whether text is a lowercase sha256 hex digest, the name of a blob."""
    return isinstance(text, str) and _SHA256_HEX.fullmatch(text) is not None


class BlobStore:
    """Blobs at root/ab/cdef… (sha256 hex split after two characters), written atomically."""

    def __init__(self, root: Path) -> None:
        self.root: Path = root
        """The blob directory."""

    def path_for(self, sha: str) -> Path:
        """Where the blob with this sha256 lives (whether or not it exists)."""
        if not _SHA256_HEX.fullmatch(sha):
            raise SessionStoreError(f"not a sha256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha[2:]

    def put(self, data: bytes) -> str:
        """Store data unless already present; return its sha256 hex. Durable on return."""
        sha = hashlib.sha256(data).hexdigest()
        final = self.path_for(sha)
        if _refresh_if_present(final):
            return sha
        created = _make_directory(final.parent)
        temporary = final.parent / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, final)
            for directory in (final.parent, *(path.parent for path in created)):
                fsync_directory(directory)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise describe_os_error("write the blob", final, error) from None
        return sha

    @contextmanager
    def batch(self) -> Iterator[BlobBatch]:
        """Write many blobs without an fsync each; all are durable when the block ends.

        Append events that name the blobs only after the block: inside it they may
        still be lost to a crash. On an exception inside the block no temporary file
        is left; blobs already renamed into place are complete, and synced anyway.
        """
        batch = BlobBatch(self)
        try:
            yield batch
        except BaseException:
            with suppress(SessionStoreError):
                batch._finish()  # the caller's error matters more than a failed sync
            raise
        batch._finish()

    def get(self, sha: str) -> bytes:
        """The bytes of the blob with this sha256; BlobNotFound if it is absent."""
        path = self.path_for(sha)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha} in {self.root}", path) from None
        except OSError as error:
            raise describe_os_error("read the blob", path, error) from None

    def open(self, sha: str) -> BinaryIO:
        """The blob opened for reading (to stream a large one); BlobNotFound if it is absent."""
        path = self.path_for(sha)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha} in {self.root}", path) from None
        except OSError as error:
            raise describe_os_error("read the blob", path, error) from None

    def size(self, sha: str) -> int | None:
        """The blob's size in bytes (one stat), or None if it is not stored."""
        try:
            return os.stat(self.path_for(sha)).st_size
        except FileNotFoundError:
            return None
        except OSError as error:
            raise describe_os_error("look at the blob", self.path_for(sha), error) from None

    def __contains__(self, sha: object) -> bool:
        """Whether a blob with this sha256 is stored."""
        return is_sha256(sha) and self.path_for(sha).exists()  # type: ignore[arg-type]


FSYNC_EACH_UP_TO = 8
"""A batch of at most this many new blobs fsyncs each one instead of calling syncfs."""


class BlobBatch:
    """Blobs written into a BlobStore without fsync, made durable together (see BlobStore.batch)."""

    def __init__(self, store: BlobStore) -> None:
        self.store: BlobStore = store
        """The store the blobs go into."""
        self.written: list[str] = []
        """The sha256 of each blob this batch wrote (not the ones already present), in order."""
        self._written_paths: list[Path] = []
        self._directories: set[Path] = set()
        self._existing: set[Path] = set()
        self._finished = False

    def put(self, data: bytes) -> str:
        """Store data unless already present; return its sha256 hex."""
        self._check_open()
        sha = hashlib.sha256(data).hexdigest()
        final = self.store.path_for(sha)
        if _refresh_if_present(final):
            return sha
        self._note_directories(final.parent)
        temporary = final.parent / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            os.rename(temporary, final)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise describe_os_error("write the blob", final, error) from None
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._wrote(sha, final)
        return sha

    def put_stream(self, chunks: Iterable[bytes]) -> str:
        """Store the concatenated chunks unless already present; return their sha256 hex.

        The chunks are hashed as they are written to a temporary file, so a large
        file is never held in memory whole. If iterating the chunks raises, the
        temporary file is removed and the error propagates.
        """
        self._check_open()
        self._note_directories(self.store.root)
        temporary = self.store.root / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        final: Path | None = None
        iterator = iter(chunks)
        in_callers_code = False  # an OSError from the chunks (a ConnectionError…) is the caller's
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                while True:
                    in_callers_code = True
                    chunk = next(iterator, None)
                    in_callers_code = False
                    if chunk is None:
                        break
                    digest.update(chunk)
                    _write_all(fd, chunk)
            finally:
                os.close(fd)
            sha = digest.hexdigest()
            final = self.store.path_for(sha)
            if _refresh_if_present(final):
                temporary.unlink()
                return sha
            self._note_directories(final.parent)
            os.rename(temporary, final)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            if in_callers_code:
                raise
            raise describe_os_error("write the blob", final or self.store.root, error) from None
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._wrote(sha, final)
        return sha

    def _check_open(self) -> None:
        """Refuse writes after the batch was made durable: they would never be synced."""
        if self._finished:
            raise SessionStoreError(f"this blob batch of {self.store.root} has already ended")

    def _note_directories(self, directory: Path) -> None:
        """Create directory if needed, remembering each directory whose entries change."""
        if directory in self._existing:
            return  # a 10,000-blob batch would otherwise stat the same 256 directories over and over
        for created in _make_directory(directory):
            self._directories.add(created.parent)
        self._existing.add(directory)

    def _wrote(self, sha: str, final: Path) -> None:
        """Record a blob renamed into place, to be synced when the batch ends."""
        self.written.append(sha)
        self._written_paths.append(final)
        self._directories.add(final.parent)

    def _finish(self) -> None:
        """Make every blob written and every directory entry made durable: one syncfs, then directory fsyncs."""
        if self._finished:
            return
        self._finished = True
        if not self._written_paths and not self._directories:
            return
        try:
            # A few blobs (a tool changed a file or two) are cheaper to fsync one by one: syncfs
            # also waits for every other process's dirty data on the same file system, which on
            # a busy disk cost a checkpoint 5-10 ms. Many blobs (an upload) are cheaper together.
            if len(self._written_paths) <= FSYNC_EACH_UP_TO or not _syncfs(self.store.root):
                for path in self._written_paths:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            # syncfs commits the journal on the usual file systems, but POSIX promises a
            # new name only after an fsync of its directory: do it, once per directory.
            for directory in sorted(self._directories):
                fsync_directory(directory)
        except OSError as error:
            raise describe_os_error("make the new blobs durable in", self.store.root, error) from None


def _write_all(fd: int, data: bytes) -> None:
    """Write all of data to fd; a write that makes no progress is a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _refresh_if_present(final: Path) -> bool:
    """Whether the blob exists; if so, and it is not recent, mark it as just used.

    Garbage collection never removes a blob younger than an hour; a writer that finds
    its blob already there is about to name it in an event, so the blob must look
    young. One touched in the last REFRESH_AFTER_SECONDS still has most of the hour
    left, and is left alone: a checkpoint of an unchanged workspace dirties no inode.
    """
    try:
        modified = os.stat(final).st_mtime
    except FileNotFoundError:
        return False
    except OSError:
        return final.exists()
    if modified < time.time() - REFRESH_AFTER_SECONDS:
        with suppress(OSError):  # a read-only store: present is all that matters
            os.utime(final)
    return True


def _make_directory(directory: Path) -> list[Path]:
    """Create directory and any missing parents; return the ones this call created, outermost first."""
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made by someone else meanwhile
        except OSError as error:
            raise describe_os_error("create the blob directory", path, error) from None
        created.append(path)
    return created


@functools.cache
def _libc_syncfs() -> Any:
    """The C library's syncfs, or None where it has none (loaded when first needed: opening a session does not)."""
    import ctypes
    import ctypes.util

    syncfs = getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True), "syncfs", None)
    if syncfs is not None:
        syncfs.argtypes = [ctypes.c_int]
        syncfs.restype = ctypes.c_int
    return syncfs


def _syncfs(directory: Path) -> bool:
    """syncfs(2) the file system holding directory; False where the C library has no syncfs."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        return False
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            import ctypes

            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)
    return True
