"""Export: a tar stream (PAX) of chosen paths of a workspace, made as it is sent.

The walk goes through directory descriptors and never follows a symlink (a
symlink is exported as one), so nothing outside the workspace ends up in the
stream; files replaced or removed mid-walk are skipped, and one that shrinks
mid-export is padded to the size its header announced.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Generator, Iterable, Iterator

from remote_sandbox.paths import DIR_FLAGS, SandboxPaths

EXPORT_CHUNK = 256 * 1024
"""Bytes per Export chunk (roughly: tar blocks are flushed when this much is buffered)."""


def export_tar(paths: SandboxPaths, roots: Iterable[str] = ()) -> Generator[bytes, None, None]:
    """A tar stream of ``roots`` (workspace-relative or below its mount; none = all), in chunks."""
    sink = _ChunkSink()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, st, dir_fd, name in _walk_tree(paths, roots):
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(name, dir_fd=dir_fd)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError:
                    continue  # removed or replaced mid-walk
                with os.fdopen(fd, "rb") as handle:
                    info.size = os.fstat(fd).st_size
                    tar.addfile(info, _ExactReader(handle, info.size))
            else:
                continue  # sockets, FIFOs, devices have no place in a snapshot
            if sink.pending() >= EXPORT_CHUNK:
                yield sink.take()
    if sink.pending():
        yield sink.take()


def _walk_tree(paths: SandboxPaths, roots: Iterable[str]) -> Iterator[tuple[str, os.stat_result, int, str]]:
    """Yield ``(relative path, lstat, dir fd, name)`` for everything under ``roots``, never following symlinks."""
    seen: set[str] = set()
    for raw in list(roots) or [""]:
        resolved = paths.resolve_workspace_root(raw)
        try:
            rel = resolved.relative
            if rel in seen:
                continue
            seen.add(rel)
            assert resolved.st is not None  # resolve_workspace_root refuses a missing root
            if stat.S_ISDIR(resolved.st.st_mode):
                dir_fd = resolved.open_dir()
                if rel:
                    yield rel, resolved.st, resolved.dir_fd, resolved.name
                yield from _walk_dir(dir_fd, rel)
            else:
                yield rel, resolved.st, resolved.dir_fd, resolved.name
        finally:
            resolved.close()


def _walk_dir(dir_fd: int, rel: str) -> Iterator[tuple[str, os.stat_result, int, str]]:
    """Yield everything below the open directory ``dir_fd`` (which this closes), depth first, sorted."""
    try:
        with os.scandir(dir_fd) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield child, st, dir_fd, entry.name
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub_fd = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue  # replaced by a symlink or removed mid-walk
                yield from _walk_dir(sub_fd, child)
    finally:
        os.close(dir_fd)


class _ChunkSink(io.RawIOBase):
    """A write-only file that buffers what tarfile writes until it is taken."""

    def __init__(self) -> None:
        """Start empty."""
        super().__init__()
        self._buffer = bytearray()

    def writable(self) -> bool:
        """Always: this is a sink."""
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        """Buffer ``data``."""
        self._buffer += data
        return len(data)

    def pending(self) -> int:
        """Bytes buffered."""
        return len(self._buffer)

    def take(self) -> bytes:
        """Everything buffered, emptying the buffer."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class _ExactReader(io.RawIOBase):
    """Reads exactly ``size`` bytes: pads with zeros if the file shrank mid-export, stops if it grew."""

    def __init__(self, handle: io.BufferedReader, size: int) -> None:
        """Read from ``handle``."""
        super().__init__()
        self._handle = handle
        self._left = size

    def readable(self) -> bool:
        """Always."""
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        """Up to ``n`` bytes of the promised ``size``."""
        n = self._left if n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = self._handle.read(n) or b""
        if len(data) < n:
            data += b"\0" * (n - len(data))
        self._left -= len(data)
        return data
