"""Unpacking an Import's tar stream into a workspace, fast in the common case and safe in every case.

The common case is a fresh or mostly new tree: many files in few directories.
So directory descriptors stay open across members (opened one component at a
time with ``O_NOFOLLOW``, as ``SandboxPaths.resolve`` does, so nothing can lead a
member out of the workspace), a file that does not exist yet is created
``O_EXCL`` under its own name and filled straight from the spooled tar with
``sendfile`` (no temp file, no rename, no copy through Python), and
directories get their modes at the end, as ``tar x`` does, so a read-only
directory does not refuse the members inside it.

Anything unusual (a symlink or a file where a directory is expected, a
compressed or sparse stream, a hard link) goes through the general path of
``_import_member``, which resolves each member from the root (``SandboxPaths``) and follows
symlinks only inside the workspace. An existing file is replaced atomically
(``AtomicWrite``). Members with absolute names or ``..``, and special files,
are refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from collections import OrderedDict
from pathlib import Path

from remote_sandbox.atomic_write import DEFAULT_FILE_MODE, AtomicWrite
from remote_sandbox.paths import DIR_FLAGS, ResolvedPath, SandboxPaths
from remote_sandbox.providers.base import InvalidRequest

MAX_OPEN_DIRS = 128
"""Directory descriptors kept open at once (least recently used closed first)."""

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SENDFILE_CHUNK = 1 << 30


class _Unusual(Exception):
    """Something in the way that the fast path does not handle: take the general path."""


class _OpenDirs:
    """Descriptors of the workspace's directories by relative path, opened (and made) on demand."""

    def __init__(self, root_fd: int) -> None:
        """Start from the open workspace root ``root_fd`` (which this object now owns)."""
        self.root_fd = root_fd
        """The workspace root."""
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, parts: list[str]) -> int:
        """The directory at ``parts`` (made if missing); ``_Unusual`` if something else is in the way."""
        if not parts:
            return self.root_fd
        key = "/".join(parts)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        parent = self.get(parts[:-1])
        name = parts[-1]
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            fd = self._open_existing(parent, name)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Unusual from None  # a symlink or a file where a directory should be
            raise
        self._fds[key] = fd
        while len(self._fds) > MAX_OPEN_DIRS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    @staticmethod
    def _open_existing(parent: int, name: str) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Unusual from None
            raise

    def forget(self, rel: str) -> None:
        """Close the descriptors of ``rel`` and everything below it (it was removed or replaced)."""
        below = rel + "/"
        for key in [k for k in self._fds if k == rel or k.startswith(below)]:
            os.close(self._fds.pop(key))

    def close(self) -> None:
        """Close every descriptor, the root's too."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self.root_fd)


def import_tar(paths: SandboxPaths, tar_path: Path) -> tuple[int, int]:
    """Unpack the tar file at ``tar_path`` into the workspace of ``paths``; return ``(files, bytes)``."""
    with open(tar_path, "rb") as spool:
        try:
            tar = tarfile.open(fileobj=spool, mode="r:*")
        except tarfile.TarError as exc:
            raise InvalidRequest(f"the import is not a readable tar stream: {exc}") from None
        # Data can be copied straight from the spool only when the stream is not compressed.
        direct = tar.fileobj is spool
        dirs = _OpenDirs(os.open(paths.workspace.host, DIR_FLAGS))
        modes: dict[str, int] = {}
        files = total = 0
        try:
            with tar:
                for member in tar:
                    parts = _checked_parts(member.name)
                    if not parts:
                        continue
                    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                        raise InvalidRequest(
                            f"tar member {member.name!r} is a device, FIFO or other special file; "
                            "only files, directories and symlinks can be imported"
                        )
                    try:
                        added = _fast_member(tar, member, parts, dirs, spool.fileno() if direct else -1, modes)
                    except _Unusual:
                        dirs.forget("/".join(parts))
                        files, total = _import_member(paths, tar, member, files, total)
                        modes.pop("/".join(parts), None)
                        continue
                    if added is not None:
                        files += 1
                        total += added
            _apply_dir_modes(dirs, modes)
        except tarfile.TarError as exc:
            raise InvalidRequest(f"the import's tar stream is damaged: {exc}") from None
        finally:
            dirs.close()
    return files, total


def _checked_parts(name: str) -> list[str]:
    """The components of a member's name; refuse one that would land outside the workspace."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise InvalidRequest(f"tar member {name!r} would land outside the workspace")
    return parts


def _fast_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parts: list[str],
    dirs: _OpenDirs,
    spool_fd: int,
    modes: dict[str, int],
) -> int | None:
    """Unpack one member the fast way; return its data bytes (None for a directory). ``_Unusual`` to go the general way."""
    rel = "/".join(parts)
    if member.isdir():
        dirs.get(parts)
        # Applied at the end (no setuid, setgid or sticky bits: the host may run as root).
        modes[rel] = (member.mode & 0o777) or 0o755
        return None
    if member.islnk() or (member.isfile() and (spool_fd < 0 or member.sparse is not None)):
        raise _Unusual  # data that is not one plain range of the spool
    parent = dirs.get(parts[:-1])
    name = parts[-1]
    if member.issym():
        _clear(parent, name, rel, dirs)
        os.symlink(member.linkname, name, dir_fd=parent)
        return 0
    try:
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
    except FileExistsError:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            # Replaced atomically: a reader of the old file never sees a half-written one.
            raise _Unusual from None
        _clear(parent, name, rel, dirs)
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
    try:
        _copy_range(spool_fd, member.offset_data, member.size, fd)
        os.fchmod(fd, (member.mode & 0o777) or 0o644)
        os.utime(fd, (member.mtime, member.mtime))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=parent)
        raise
    finally:
        os.close(fd)
    return member.size


def _clear(parent: int, name: str, rel: str, dirs: _OpenDirs) -> None:
    """Remove whatever is at ``name`` in ``parent`` (a directory with its contents), if anything."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        dirs.forget(rel)
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)


def _copy_range(source_fd: int, offset: int, count: int, target_fd: int) -> None:
    """Copy ``count`` bytes of ``source_fd`` from ``offset`` to ``target_fd``, in the kernel."""
    while count > 0:
        sent = os.sendfile(target_fd, source_fd, offset, min(count, _SENDFILE_CHUNK))
        if sent == 0:
            raise tarfile.ReadError("unexpected end of data")
        offset += sent
        count -= sent


def _apply_dir_modes(dirs: _OpenDirs, modes: dict[str, int]) -> None:
    """Give the imported directories their modes, deepest first."""
    for rel in sorted(modes, key=lambda r: r.count("/"), reverse=True):
        try:
            fd = dirs.get(rel.split("/"))
        except (_Unusual, FileNotFoundError):
            continue  # replaced by a later member
        os.fchmod(fd, modes[rel])


def _import_member(
    paths: SandboxPaths, tar: tarfile.TarFile, member: tarfile.TarInfo, files: int, total: int
) -> tuple[int, int]:
    """Unpack one file, directory or symlink the general way: resolved from the root, symlinks followed inside the workspace."""
    parts = _checked_parts(member.name)
    if not parts:
        return files, total
    rel = "/".join(parts)
    mode = member.mode & 0o7777
    if member.isdir():
        resolved = paths.resolve(rel, create_parents=True, follow_last=False)
        try:
            if resolved.st is not None and not stat.S_ISDIR(resolved.st.st_mode):
                _remove_existing(resolved)
            if resolved.st is None:
                os.mkdir(resolved.name, 0o755, dir_fd=resolved.dir_fd)
            _chmod_dir(resolved, mode or 0o755)
        finally:
            resolved.close()
        return files, total
    if member.issym():
        resolved = paths.resolve(rel, create_parents=True, follow_last=False)
        try:
            _remove_existing(resolved)
            os.symlink(member.linkname, resolved.name, dir_fd=resolved.dir_fd)
        finally:
            resolved.close()
        return files + 1, total
    source = tar.extractfile(member)
    if source is None:
        raise InvalidRequest(f"tar member {member.name!r} has no data")
    resolved = paths.resolve(rel, create_parents=True, follow_last=False)
    if resolved.st is not None and not stat.S_ISREG(resolved.st.st_mode):
        try:
            _remove_existing(resolved)
        except BaseException:
            resolved.close()
            raise
    writer = AtomicWrite(resolved, mode or DEFAULT_FILE_MODE)
    try:
        while chunk := source.read(1 << 20):
            writer.write(chunk)
            total += len(chunk)
        writer.commit(mtime=member.mtime)
    finally:
        writer.abort()
    return files + 1, total


def _chmod_dir(resolved: ResolvedPath, mode: int) -> None:
    """Give the directory at ``resolved`` permission bits ``mode`` (no setuid, setgid or sticky bits)."""
    fd = resolved.open_dir()
    try:
        os.fchmod(fd, mode & 0o777)
    finally:
        os.close(fd)


def _remove_existing(resolved: ResolvedPath) -> None:
    """Remove whatever is at ``resolved`` (a directory with its contents) so a new entry can take its place."""
    if resolved.st is None:
        return
    if stat.S_ISDIR(resolved.st.st_mode):
        shutil.rmtree(resolved.name, dir_fd=resolved.dir_fd)
    else:
        os.unlink(resolved.name, dir_fd=resolved.dir_fd)
    resolved.st = None
