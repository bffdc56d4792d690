"""A sandbox's workspace as the RPCs see it: its host directories, and the file operations every provider shares.

Each sandbox has a host directory ``<state_dir>/sandboxes/<id>/`` holding
``workspace/`` (what commands see at the recipe's workdir) and ``spill/`` (the
full output of truncated commands, seen at ``SandboxRecord.spill_mount``,
outside the workspace so it never ends up in a checkpoint).

Every path a request names goes through the path resolver
(``remote_sandbox.paths``), which keeps it inside one of those two areas. The
pieces of each operation live beside it: ``file_reader`` (ReadFile),
``atomic_write`` (WriteFile), ``manifest``, ``tar_export`` and ``tar_import``.

All functions here block; the server runs them on worker threads.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator, Iterable
from pathlib import Path

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox import tar_export, tar_import
from remote_sandbox.atomic_write import DEFAULT_FILE_MODE, AtomicWrite
from remote_sandbox.file_info import file_info
from remote_sandbox.file_reader import FileReader
from remote_sandbox.manifest import ManifestState
from remote_sandbox.manifest import manifest as manifest_of
from remote_sandbox.paths import DIR_FLAGS, Area, ResolvedPath, SandboxPaths, fold_dots, shown, split_path
from remote_sandbox.providers.base import InvalidRequest, SandboxRecord


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
        return "/" + "/".join(fold_dots(split_path(cwd)))
    return "/" + "/".join(fold_dots(split_path(record.workdir) + split_path(cwd)))


class Workspace:
    """The file operations of one sandbox's workspace and spill area."""

    def __init__(self, record: SandboxRecord) -> None:
        """Operate on ``record``'s workspace (read-write) and spill area (read-only)."""
        self.workdir = record.workdir
        """The workspace path as the sandbox sees it."""
        self.paths = SandboxPaths(
            Area(record.workspace, record.workdir, True, "workspace"),
            Area(spill_dir(record), record.spill_mount, False, "spill area"),
        )
        """Where the paths of requests lead."""

    def stat(self, raw: str) -> pb.FileInfo:
        """What ``raw`` is (following symlinks inside the workspace); ``exists`` false if nothing is there."""
        resolved = self.paths.resolve(raw)
        try:
            if resolved.st is None:
                return pb.FileInfo(path=shown(resolved.sandbox_path), exists=False)
            return file_info(resolved.sandbox_path, resolved.st)
        finally:
            resolved.close()

    def list_dir(self, raw: str) -> list[pb.FileInfo]:
        """The entries of directory ``raw``, sorted by name; symlinks are reported, not followed."""
        resolved = self.paths.resolve(raw)
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
                    entries.append(file_info(f"{base}/{entry.name}", st))
        finally:
            os.close(dir_fd)
        entries.sort(key=lambda info: info.path)
        return entries

    def _open_dir(self, raw: str, resolved: ResolvedPath) -> int:
        if resolved.st is None:
            raise InvalidRequest(f"no such directory: {raw}")
        if not stat.S_ISDIR(resolved.st.st_mode):
            raise InvalidRequest(f"{raw} is not a directory")
        try:
            return resolved.open_dir()
        except OSError as exc:
            raise InvalidRequest(f"cannot open directory {raw}: {exc.strerror}") from None

    def open_for_read(self, raw: str) -> tuple[int, int]:
        """Open regular file ``raw``; return ``(fd, size)``. The caller closes the fd."""
        resolved = self.paths.resolve(raw)
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
        resolved = self.paths.resolve(raw, create_parents=create_parents)
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
        if request.paths:
            roots = []
            for raw in request.paths:
                resolved = self.paths.resolve_workspace_root(raw)
                # Normalised here (``..`` folded, the mount prefix dropped): the walk takes plain relative paths.
                roots.append(resolved.relative)
                resolved.close()
            normalised = pb.ManifestRequest()
            normalised.CopyFrom(request)
            del normalised.paths[:]
            normalised.paths.extend(roots)
            request = normalised
        root_fd = os.open(self.paths.workspace.host, DIR_FLAGS)
        try:
            return manifest_of(root_fd, request, state)
        finally:
            os.close(root_fd)

    def export_tar(self, paths: Iterable[str] = ()) -> Generator[bytes, None, None]:
        """A tar stream (PAX) of ``paths`` (workspace-relative; none = all), in chunks (see ``tar_export``)."""
        return tar_export.export_tar(self.paths, paths)

    def import_tar(self, tar_path: Path) -> tuple[int, int]:
        """Unpack the tar file at ``tar_path`` into the workspace; return ``(files, bytes)`` (see ``tar_import``)."""
        return tar_import.import_tar(self.paths, tar_path)
