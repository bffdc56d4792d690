"""File operations on a sandbox's workspace, shared by every provider.

Each sandbox has a host directory ``<state_dir>/sandboxes/<id>/`` holding
``workspace/`` (what commands see at the recipe's workdir) and ``spill/`` (the
full output of truncated commands, seen at ``SandboxRecord.spill_mount``,
outside the workspace so it never ends up in a checkpoint).

Every path a request names is resolved *inside* one of those two areas, one
component at a time with directory file descriptors and ``O_NOFOLLOW``, so a
sandboxed process that swaps a directory for a symlink mid-request cannot make
the host (which may run as root) touch anything outside. Symlinks inside the
workspace are followed as the sandbox would follow them; a symlink, ``..`` or
absolute path that leads outside is refused with ``InvalidRequest``.

All functions here block; the server runs them on worker threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import secrets
import shutil
import stat
import tarfile
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox import tar_import
from remote_sandbox.manifest import ManifestState
from remote_sandbox.manifest import manifest as manifest_of
from remote_sandbox.providers.base import InvalidRequest, SandboxRecord

READ_CHUNK = 256 * 1024
"""Bytes per ReadFile chunk. Measured here over gRPC: 1 MiB took 2.6-3.5 ms in 256 KiB
messages, 4-7 ms in 1 MiB ones and 5-6.6 ms in 64 KiB ones; 100 MB went at 230 MB/s in
256 KiB messages, 165-195 MB/s in 64 KiB, 1 MiB or 4 MiB ones."""

EXPORT_CHUNK = 256 * 1024
"""Bytes per Export chunk (roughly: tar blocks are flushed when this much is buffered)."""

MAX_SYMLINK_HOPS = 40
"""Symlinks followed while resolving one path, as the kernel allows."""

DEFAULT_FILE_MODE = 0o644
"""Mode of a written file when the request names none."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {
    stat.S_IFREG: pb.FileInfo.FILE,
    stat.S_IFDIR: pb.FileInfo.DIRECTORY,
    stat.S_IFLNK: pb.FileInfo.SYMLINK,
}


def sandbox_root(state_dir: Path, sandbox_id: str) -> Path:
    """The host directory that holds everything of one sandbox."""
    return state_dir / "sandboxes" / sandbox_id


def create_sandbox_dirs(root: Path, with_workspace: bool = True) -> Path:
    """Create ``root`` with its ``spill/`` and (unless the workspace is a direct one) ``workspace/``; return the latter."""
    root.mkdir(parents=True, mode=0o700)
    if with_workspace:
        (root / "workspace").mkdir(mode=0o755)
    (root / "spill").mkdir(mode=0o755)
    return root / "workspace"


def spill_dir(record: SandboxRecord) -> Path:
    """The host directory of a sandbox's spill area."""
    return record.state_root / "spill"


def split_path(path: str) -> list[str]:
    """The components of a POSIX path, without empty ones and ``.``."""
    return [part for part in path.split("/") if part not in ("", ".")]


def path_under(path: str, mount: str) -> list[str] | None:
    """The components of absolute ``path`` below ``mount``, or None if it is not below it (lexically)."""
    parts, prefix = split_path(path), split_path(mount)
    if parts[: len(prefix)] != prefix:
        return None
    return parts[len(prefix) :]


def exec_cwd(record: SandboxRecord, cwd: str) -> str:
    """The directory a command starts in, as the sandbox sees it.

    Empty means the workdir; a relative path is taken from the workdir; an
    absolute path is kept as is: a command may ``cd`` anywhere in its sandbox
    anyway, and refusing would strand a shell whose last ``cd`` left the workspace.
    """
    if "\0" in cwd:
        raise InvalidRequest("the working directory contains a NUL byte")
    if not cwd:
        return record.workdir
    if cwd.startswith("/"):
        return "/" + "/".join(_normalise(split_path(cwd)))
    return "/" + "/".join(_normalise(split_path(record.workdir) + split_path(cwd)))


def _normalise(parts: list[str]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return out


@dataclass(frozen=True)
class _Area:
    """A host directory and where the sandbox sees it."""

    host: Path
    mount: str
    writable: bool
    label: str


@dataclass
class _Resolved:
    """Where a path led: an open directory and a name in it ("" = the directory itself)."""

    dir_fd: int
    name: str
    parents: list[str]
    """Components from the area's root to ``dir_fd``."""
    st: os.stat_result | None
    """The final object's stat (after following a final symlink if asked); None if missing."""
    area: _Area

    @property
    def sandbox_path(self) -> str:
        """The resolved path as the sandbox sees it."""
        parts = [*split_path(self.area.mount), *self.parents, *([self.name] if self.name else [])]
        return "/" + "/".join(parts)

    def close(self) -> None:
        """Close the directory descriptor."""
        os.close(self.dir_fd)


class Workspace:
    """The file operations of one sandbox's workspace and spill area."""

    def __init__(self, record: SandboxRecord) -> None:
        """Operate on ``record``'s workspace (read-write) and spill area (read-only)."""
        self.workdir = record.workdir
        """The workspace path as the sandbox sees it."""
        self.workspace = _Area(record.workspace, record.workdir, True, "workspace")
        self.spill = _Area(spill_dir(record), record.spill_mount, False, "spill area")

    # ----- resolution

    def _outside(self, raw: str, why: str = "") -> InvalidRequest:
        return InvalidRequest(f"path {raw} is outside the workspace ({self.workdir}){why}")

    def _area_for(self, raw: str) -> tuple[_Area, list[str]]:
        """Which area ``raw`` names, and its components below that area's root."""
        if "\0" in raw:
            raise InvalidRequest("the path contains a NUL byte")
        if not raw.startswith("/"):
            return self.workspace, raw.split("/")
        for area in (self.workspace, self.spill):
            rest = path_under(raw, area.mount)
            if rest is not None:
                # `..` components are kept: the walk refuses to climb out of the area.
                return area, rest
        raise self._outside(raw)

    def resolve(self, raw: str, *, follow_last: bool = True, create_parents: bool = False) -> _Resolved:
        """Walk ``raw`` inside its area; the caller closes the result."""
        area, parts = self._area_for(raw)
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else part not in ("", ".")
            if depth < 0:
                # Refused before touching the disk, whatever exists on the way.
                raise self._outside(raw)
        if create_parents and not area.writable:
            raise InvalidRequest(f"path {raw} is in the read-only {area.label}")
        root_fd = os.open(area.host, _DIR_FLAGS)
        stack = [root_fd]
        names: list[str] = []
        pending = deque(parts)
        hops = 0
        try:
            while True:
                while pending and pending[0] in ("", "."):
                    pending.popleft()
                if not pending:
                    fd = stack.pop()
                    return _Resolved(fd, "", names, os.fstat(fd), area)
                part = pending.popleft()
                if part == "..":
                    if not names:
                        raise self._outside(raw)
                    os.close(stack.pop())
                    names.pop()
                    continue
                is_last = all(p in ("", ".") for p in pending)
                try:
                    st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if is_last:
                        return _Resolved(stack.pop(), part, names, None, area)
                    if not create_parents:
                        missing = "/".join([*split_path(area.mount), *names, part])
                        raise InvalidRequest(f"directory /{missing} does not exist (path {raw})") from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=stack[-1])
                    st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) and (follow_last or not is_last):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise InvalidRequest(f"path {raw} has too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=stack[-1])
                    if target.startswith("/"):
                        rest = path_under(target, area.mount)
                        if rest is None:
                            raise self._outside(raw, f": symlink {part} points to {target}")
                        while len(stack) > 1:
                            os.close(stack.pop())
                        names.clear()
                        pending.extendleft(reversed(rest))
                    else:
                        pending.extendleft(reversed(target.split("/")))
                    continue
                if is_last:
                    return _Resolved(stack.pop(), part, names, st, area)
                if not stat.S_ISDIR(st.st_mode):
                    shown = "/".join([*split_path(area.mount), *names, part])
                    raise InvalidRequest(f"/{shown} is not a directory (path {raw})")
                try:
                    fd = os.open(part, _DIR_FLAGS, dir_fd=stack[-1])
                except OSError as exc:
                    # Swapped for a symlink or removed since the stat: a racing process.
                    raise InvalidRequest(f"path {raw} changed while it was resolved: {exc.strerror}") from None
                stack.append(fd)
                names.append(part)
        finally:
            for fd in stack:
                os.close(fd)

    # ----- the RPCs

    def stat(self, raw: str) -> pb.FileInfo:
        """What ``raw`` is (following symlinks inside the workspace); ``exists`` false if nothing is there."""
        resolved = self.resolve(raw)
        try:
            if resolved.st is None:
                return pb.FileInfo(path=resolved.sandbox_path, exists=False)
            return _file_info(resolved.sandbox_path, resolved.st)
        finally:
            resolved.close()

    def list_dir(self, raw: str) -> list[pb.FileInfo]:
        """The entries of directory ``raw``, sorted by name; symlinks are reported, not followed."""
        resolved = self.resolve(raw)
        try:
            dir_fd = self._open_dir(raw, resolved)
        finally:
            resolved.close()
        base = resolved.sandbox_path.rstrip("/")
        entries = []
        try:
            with os.scandir(dir_fd) as scan:
                for entry in scan:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listing
                    entries.append(_file_info(f"{base}/{entry.name}", st))
        finally:
            os.close(dir_fd)
        entries.sort(key=lambda info: info.path)
        return entries

    def _open_dir(self, raw: str, resolved: _Resolved) -> int:
        if resolved.st is None:
            raise InvalidRequest(f"no such directory: {raw}")
        if not stat.S_ISDIR(resolved.st.st_mode):
            raise InvalidRequest(f"{raw} is not a directory")
        if not resolved.name:
            return os.dup(resolved.dir_fd)
        try:
            return os.open(resolved.name, _DIR_FLAGS, dir_fd=resolved.dir_fd)
        except OSError as exc:
            raise InvalidRequest(f"cannot open directory {raw}: {exc.strerror}") from None

    def open_for_read(self, raw: str) -> tuple[int, int]:
        """Open regular file ``raw``; return ``(fd, size)``. The caller closes the fd."""
        resolved = self.resolve(raw)
        try:
            if resolved.st is None:
                raise InvalidRequest(f"no such file: {raw}")
            if stat.S_ISDIR(resolved.st.st_mode):
                raise InvalidRequest(f"{raw} is a directory, not a file")
            try:
                # O_NONBLOCK: opening a FIFO must not hang the host; it is refused just below.
                fd = os.open(
                    resolved.name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=resolved.dir_fd,
                )
            except OSError as exc:
                raise InvalidRequest(f"cannot open {raw}: {exc.strerror}") from None
        finally:
            resolved.close()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InvalidRequest(f"{raw} is not a regular file")
        return fd, st.st_size

    def open_reader(self, raw: str, offset: int = 0, length: int = 0) -> FileReader:
        """Open regular file ``raw`` to read ``length`` bytes from ``offset`` (0 = to the end)."""
        fd, size = self.open_for_read(raw)
        return FileReader(fd, size, offset, size if length == 0 else min(size, offset + length))

    def open_for_write(self, raw: str, mode: int, create_parents: bool) -> AtomicWrite:
        """Start an atomic write of ``raw``: a temp file beside it, renamed over it on commit."""
        resolved = self.resolve(raw, create_parents=create_parents)
        try:
            if not resolved.area.writable:
                raise InvalidRequest(f"path {raw} is in the read-only {resolved.area.label}")
            if not resolved.name or (resolved.st is not None and stat.S_ISDIR(resolved.st.st_mode)):
                raise InvalidRequest(f"{raw} is a directory; name a file to write")
            if resolved.st is not None and not stat.S_ISREG(resolved.st.st_mode):
                raise InvalidRequest(f"{raw} exists and is not a regular file")
            return AtomicWrite(resolved, mode or DEFAULT_FILE_MODE)
        except BaseException:
            resolved.close()
            raise

    def write_file(self, raw: str, data: bytes, mode: int = 0, create_parents: bool = True) -> pb.FileInfo:
        """Write ``data`` to ``raw`` atomically in one go."""
        writer = self.open_for_write(raw, mode, create_parents)
        try:
            writer.write(data)
            return writer.commit()
        finally:
            writer.abort()

    # ----- workspace snapshots

    def manifest(self, request: pb.ManifestRequest, state: ManifestState) -> pb.ManifestResponse:
        """Answer a Manifest request (see ``remote_sandbox.manifest``); its paths must stay inside the workspace."""
        roots = []
        for raw in request.paths:
            if raw.startswith("/") and path_under(raw, self.workspace.mount) is None:
                raise self._outside(raw)
            resolved = self.resolve(raw, follow_last=False)
            try:
                if resolved.area is not self.workspace:
                    raise self._outside(raw)
                if resolved.st is None:
                    raise InvalidRequest(f"no such file or directory: {raw}")
                # Normalised here (``..`` folded, the mount prefix dropped): the walk takes plain relative paths.
                roots.append("/".join([*resolved.parents, *([resolved.name] if resolved.name else [])]))
            finally:
                resolved.close()
        if roots:
            normalised = pb.ManifestRequest()
            normalised.CopyFrom(request)
            del normalised.paths[:]
            normalised.paths.extend(roots)
            request = normalised
        root_fd = os.open(self.workspace.host, _DIR_FLAGS)
        try:
            return manifest_of(root_fd, request, state)
        finally:
            os.close(root_fd)

    def _walk_tree(self, paths: Iterable[str]) -> Iterator[tuple[str, os.stat_result, int, str]]:
        """Yield ``(relative path, lstat, dir fd, name)`` for everything under ``paths``, never following symlinks."""
        roots = list(paths) or [""]
        seen: set[str] = set()
        for raw in roots:
            if raw.startswith("/") and path_under(raw, self.workspace.mount) is None:
                raise self._outside(raw)
            resolved = self.resolve(raw, follow_last=False)
            try:
                if resolved.area is not self.workspace:
                    raise self._outside(raw)
                if resolved.st is None:
                    raise InvalidRequest(f"no such file or directory: {raw}")
                rel = "/".join([*resolved.parents, *([resolved.name] if resolved.name else [])])
                if rel in seen:
                    continue
                seen.add(rel)
                if stat.S_ISDIR(resolved.st.st_mode):
                    if resolved.name:
                        dir_fd = os.open(resolved.name, _DIR_FLAGS, dir_fd=resolved.dir_fd)
                    else:
                        dir_fd = os.dup(resolved.dir_fd)
                    if rel:
                        yield rel, resolved.st, resolved.dir_fd, resolved.name
                    yield from _walk_dir(dir_fd, rel)
                else:
                    yield rel, resolved.st, resolved.dir_fd, resolved.name
            finally:
                resolved.close()

    def export_tar(self, paths: Iterable[str] = ()) -> Generator[bytes, None, None]:
        """A tar stream (PAX) of ``paths`` (workspace-relative; none = all), in chunks."""
        sink = _ChunkSink()
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for rel, st, dir_fd, name in self._walk_tree(paths):
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

    def import_tar(self, tar_path: Path) -> tuple[int, int]:
        """Unpack the tar file at ``tar_path`` into the workspace; return ``(files, bytes)`` (see ``tar_import``)."""
        return tar_import.import_tar(self, tar_path)

    def _import_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, files: int, total: int) -> tuple[int, int]:
        """Unpack one member the general way: resolved from the root, symlinks followed inside the workspace."""
        name = member.name
        parts = split_path(name)
        if name.startswith("/") or ".." in parts:
            raise InvalidRequest(f"tar member {name!r} would land outside the workspace")
        if not parts:
            return files, total
        rel = "/".join(parts)
        mode = member.mode & 0o7777
        if member.isdir():
            resolved = self.resolve(rel, create_parents=True, follow_last=False)
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
            resolved = self.resolve(rel, create_parents=True, follow_last=False)
            try:
                _remove_existing(resolved)
                os.symlink(member.linkname, resolved.name, dir_fd=resolved.dir_fd)
            finally:
                resolved.close()
            return files + 1, total
        if member.isfile() or member.islnk():
            source = tar.extractfile(member)
            if source is None:
                raise InvalidRequest(f"tar member {name!r} has no data")
            resolved = self.resolve(rel, create_parents=True, follow_last=False)
            if resolved.st is not None and not stat.S_ISREG(resolved.st.st_mode):
                try:
                    _remove_existing(resolved)
                except BaseException:
                    resolved.close()
                    raise
                resolved.st = None
            writer = AtomicWrite(resolved, mode or DEFAULT_FILE_MODE)
            try:
                while chunk := source.read(1 << 20):
                    writer.write(chunk)
                    total += len(chunk)
                writer.commit(mtime=member.mtime)
            finally:
                writer.abort()
            return files + 1, total
        raise InvalidRequest(
            f"tar member {name!r} is a device, FIFO or other special file; only files, directories and symlinks can be imported"
        )


def _chmod_dir(resolved: _Resolved, mode: int) -> None:
    fd = os.open(resolved.name, _DIR_FLAGS, dir_fd=resolved.dir_fd)
    try:
        os.fchmod(fd, mode & 0o777)
    finally:
        os.close(fd)


def _remove_existing(resolved: _Resolved) -> None:
    """Remove whatever is at ``resolved`` (a directory with its contents) so a new entry can take its place."""
    if resolved.st is None:
        return
    if stat.S_ISDIR(resolved.st.st_mode):
        shutil.rmtree(resolved.name, dir_fd=resolved.dir_fd)
    else:
        os.unlink(resolved.name, dir_fd=resolved.dir_fd)
    resolved.st = None


_IOV_MAX = 1024
"""Buffers one ``writev`` call takes at most (Linux's IOV_MAX)."""

_RENAME_EXCHANGE = 2
"""``renameat2`` flag: swap two names atomically (linux/fs.h)."""


def _load_renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2``, or None where it is missing."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _exchange(dir_fd: int, first: str, second: str) -> bool:
    """Swap names ``first`` and ``second`` in ``dir_fd`` atomically; False if either is missing or this is unsupported."""
    if _renameat2 is None:
        return False
    if _renameat2(dir_fd, os.fsencode(first), dir_fd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), second)


class FileReader:
    """A byte range of an open regular file, read in chunks; the caller closes it."""

    def __init__(self, fd: int, size: int, offset: int, end: int) -> None:
        """Read ``fd`` (which this object now owns) from ``offset`` up to ``end``."""
        self.size = size
        """The file's size when it was opened."""
        self.done = offset >= end
        """Whether the range is read to its end (or the file shrank under it)."""
        self._fd = fd
        self._position = offset
        self._end = end

    def read(self, max_bytes: int) -> list[bytes]:
        """The next chunks of at most ``READ_CHUNK`` bytes each, ``max_bytes`` in all; ``[]`` once done."""
        chunks: list[bytes] = []
        while not self.done and max_bytes > 0:
            data = os.pread(self._fd, min(READ_CHUNK, self._end - self._position, max_bytes), self._position)
            if not data:
                self.done = True  # the file shrank while being read
                break
            chunks.append(data)
            self._position += len(data)
            max_bytes -= len(data)
            self.done = self._position >= self._end
        return chunks

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AtomicWrite:
    """A file being written: a temp file in the target's directory, renamed over the target on commit.

    Not fsynced: the rename alone makes the switch atomic for every reader, and
    durability across a host crash would buy nothing, since a host that restarts
    removes every sandbox its earlier run left (``SandboxHost._lock_state_dir``);
    the harness restores from its own checkpoints. An fsync cost about 3 ms per
    file here, which a 10,000-file Import paid 10,000 times.
    """

    def __init__(self, resolved: _Resolved, mode: int) -> None:
        """Create the temp file beside ``resolved`` (which this object now owns)."""
        self.resolved = resolved
        """The target's directory and name."""
        # No setuid, setgid or sticky bits: the host may run as root.
        self.mode = mode & 0o777
        """Permission bits the file gets."""
        self.size = 0
        """Bytes written so far."""
        self.temp_name = f".{resolved.name[:200]}.tether-{secrets.token_hex(6)}.tmp"
        """The temp file's name in the target's directory."""
        self._fd: int | None = os.open(
            self.temp_name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=resolved.dir_fd,
        )
        self._done = False

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def write_all(self, chunks: list[bytes]) -> None:
        """Append ``chunks`` in order, with as few system calls as the kernel allows."""
        assert self._fd is not None
        pending = [memoryview(chunk) for chunk in chunks if chunk]
        while pending:
            written = os.writev(self._fd, pending[:_IOV_MAX])
            self.size += written
            while pending and written >= len(pending[0]):
                written -= len(pending.pop(0))
            if written:
                pending[0] = pending[0][written:]

    def commit(self, mtime: float | None = None) -> pb.FileInfo:
        """Set the mode and rename over the target; return what is there now."""
        assert self._fd is not None
        os.fchmod(self._fd, self.mode)
        if mtime is not None:
            os.utime(self._fd, (mtime, mtime))
        st = os.fstat(self._fd)
        os.close(self._fd)
        self._fd = None
        dir_fd, name = self.resolved.dir_fd, self.resolved.name
        if self.resolved.st is not None and _exchange(dir_fd, self.temp_name, name):
            # The new file is in place; what was there has the temp name now. A plain rename
            # over an existing file makes ext4 start writing the new data out at once
            # (auto_da_alloc): 0.9 ms of a 1 MiB write here, against 0.09 ms for this.
            try:
                os.unlink(self.temp_name, dir_fd=dir_fd)
            except OSError:
                _exchange(dir_fd, self.temp_name, name)  # a directory was put there meanwhile: undo
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.resolved.sandbox_path) from None
        else:
            os.rename(self.temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        self._done = True
        return _file_info(self.resolved.sandbox_path, st)

    def abort(self) -> None:
        """Drop the temp file unless committed; release the directory. Safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._done:
            with contextlib.suppress(OSError):
                os.unlink(self.temp_name, dir_fd=self.resolved.dir_fd)
            self._done = True
        if self.resolved.dir_fd >= 0:
            self.resolved.close()
            self.resolved.dir_fd = -1


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
                    sub_fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue  # replaced by a symlink or removed mid-walk
                yield from _walk_dir(sub_fd, child)
    finally:
        os.close(dir_fd)


def _file_info(path: str, st: os.stat_result) -> pb.FileInfo:
    """A FileInfo from a stat result."""
    return pb.FileInfo(
        # A name that is not UTF-8 (only a tar member can bring one) is shown approximately.
        path=path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
        kind=_KINDS.get(stat.S_IFMT(st.st_mode), pb.FileInfo.OTHER),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        exists=True,
    )


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
