"""The path resolver: where a path named in a request leads, kept inside a sandbox's workspace or spill area.

Every path a request names is resolved *inside* one of two areas (the
workspace, read-write, and the spill area, read-only), one component at a time
with directory file descriptors and ``O_NOFOLLOW``, so a sandboxed process that
swaps a directory for a symlink mid-request cannot make the host (which may run
as root) touch anything outside: the open of the swapped name fails instead.
Symlinks inside an area are followed as the sandbox would follow them; a
symlink, ``..`` or absolute path that leads outside is refused with
``InvalidRequest``, and so are symlink loops and paths longer than the kernel's
``PATH_MAX`` or with a name longer than ``NAME_MAX``.

Why a walk by hand rather than ``openat2(RESOLVE_BENEATH | RESOLVE_IN_ROOT)``:
an absolute symlink in the workspace names a path as the *sandbox* sees it
(``/workspace/src``), which must be mapped onto the area's host directory;
``RESOLVE_IN_ROOT`` would look for ``<host dir>/workspace/src`` instead. The
walk also names the component at fault in its messages.

All functions here block; the server runs them on worker threads.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from remote_sandbox.providers.base import InvalidRequest

MAX_SYMLINK_HOPS = 40
"""Symlinks followed while resolving one path, as the kernel allows."""

PATH_MAX = 4096
"""Bytes of the longest path the kernel takes, its final NUL included (linux/limits.h)."""

NAME_MAX = 255
"""Bytes of the longest name of one directory entry (linux/limits.h)."""

MAX_DEPTH = PATH_MAX // 2
"""Directories a resolved path may lead down: as many as a ``PATH_MAX`` path can name. Each holds a descriptor."""

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How every directory on the way is opened: never through a symlink."""

_SHOWN_CHARS = 80
"""Characters of an over-long path quoted in a message."""


def split_path(path: str) -> list[str]:
    """The components of a POSIX path, without empty ones and ``.``."""
    return [part for part in path.split("/") if part not in ("", ".")]


def path_under(path: str, mount: str) -> list[str] | None:
    """The components of absolute ``path`` below ``mount``, or None if it is not below it (lexically)."""
    parts, prefix = split_path(path), split_path(mount)
    if parts[: len(prefix)] != prefix:
        return None
    return parts[len(prefix) :]


def fold_dots(parts: list[str]) -> list[str]:
    """``parts`` with each ``..`` removing the component before it (none left: dropped, as at ``/``)."""
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return out


def shown(text: str) -> str:
    """``text`` as a message can carry it: bytes that are not UTF-8 (surrogate-escaped) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class Area:
    """A host directory and where the sandbox sees it."""

    host: Path
    """The directory on the host."""
    mount: str
    """Where the sandbox sees it."""
    writable: bool
    """Whether requests may write in it."""
    label: str
    """What messages call it."""


@dataclass
class ResolvedPath:
    """Where a path led: an open directory and a name in it ("" = the directory itself)."""

    dir_fd: int
    """The directory holding the final name; owned by this object."""
    name: str
    """The final name, "" when the path is the directory itself."""
    parents: list[str]
    """Components from the area's root to ``dir_fd``."""
    st: os.stat_result | None
    """The final object's stat (after following a final symlink if asked); None if missing."""
    area: Area
    """The area the path is in."""

    @property
    def relative(self) -> str:
        """The resolved path below the area's root ("" = the root)."""
        return "/".join([*self.parents, *([self.name] if self.name else [])])

    @property
    def sandbox_path(self) -> str:
        """The resolved path as the sandbox sees it."""
        return "/" + "/".join([*split_path(self.area.mount), *self.parents, *([self.name] if self.name else [])])

    def open_dir(self) -> int:
        """A new descriptor of the final object, which must be a directory (the caller closes it)."""
        if not self.name:
            return os.dup(self.dir_fd)
        return os.open(self.name, DIR_FLAGS, dir_fd=self.dir_fd)

    def close(self) -> None:
        """Close the directory descriptor."""
        os.close(self.dir_fd)


class SandboxPaths:
    """Resolves the paths of one sandbox's requests inside its workspace and spill area."""

    def __init__(self, workspace: Area, spill: Area) -> None:
        """Resolve relative paths in ``workspace``, absolute ones in whichever area holds them."""
        self.workspace = workspace
        """The workspace (read-write)."""
        self.spill = spill
        """The spill area (read-only to requests)."""

    def outside(self, raw: str, why: str = "") -> InvalidRequest:
        """The error for ``raw`` leading outside the workspace."""
        return InvalidRequest(f"path {_quoted(raw)} is outside the workspace ({self.workspace.mount}){why}")

    def _area_for(self, raw: str) -> tuple[Area, list[str]]:
        """Which area ``raw`` names, and its components below that area's root."""
        if "\0" in raw:
            raise InvalidRequest("the path contains a NUL byte")
        size = len(os.fsencode(raw))
        if size >= PATH_MAX:
            raise InvalidRequest(
                f"path {_quoted(raw)} is {size} bytes long; a path may be at most {PATH_MAX - 1} bytes"
            )
        if not raw.startswith("/"):
            return self.workspace, raw.split("/")
        for area in (self.workspace, self.spill):
            rest = path_under(raw, area.mount)
            if rest is not None:
                # `..` components are kept: the walk refuses to climb out of the area.
                return area, rest
        raise self.outside(raw)

    def resolve(self, raw: str, *, follow_last: bool = True, create_parents: bool = False) -> ResolvedPath:
        """Walk ``raw`` inside its area; the caller closes the result."""
        area, parts = self._area_for(raw)
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else part not in ("", ".")
            if depth < 0:
                # Refused before touching the disk, whatever exists on the way.
                raise self.outside(raw)
            _check_name(part, raw)
        if create_parents and not area.writable:
            raise InvalidRequest(f"path {_quoted(raw)} is in the read-only {area.label}")
        root_fd = os.open(area.host, DIR_FLAGS)
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
                    return ResolvedPath(fd, "", names, os.fstat(fd), area)
                part = pending.popleft()
                if part == "..":
                    if not names:
                        raise self.outside(raw)
                    os.close(stack.pop())
                    names.pop()
                    continue
                _check_name(part, raw)  # again: a symlink's target brings new names
                is_last = all(p in ("", ".") for p in pending)
                try:
                    st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if is_last:
                        return ResolvedPath(stack.pop(), part, names, None, area)
                    if not create_parents:
                        missing = "/".join([*split_path(area.mount), *names, part])
                        raise InvalidRequest(
                            f"directory /{shown(missing)} does not exist (path {_quoted(raw)})"
                        ) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=stack[-1])
                    try:
                        st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
                    except FileNotFoundError:
                        raise _changed(raw, "removed") from None
                if stat.S_ISLNK(st.st_mode) and (follow_last or not is_last):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise InvalidRequest(f"path {_quoted(raw)} has too many levels of symbolic links")
                    try:
                        target = os.readlink(part, dir_fd=stack[-1])
                    except OSError as exc:
                        # No longer a symlink (EINVAL) or gone since the stat: a racing process.
                        raise _changed(raw, exc.strerror) from None
                    if target.startswith("/"):
                        rest = path_under(target, area.mount)
                        if rest is None:
                            raise self.outside(raw, f": symlink {shown(part)} points to {shown(target)}")
                        while len(stack) > 1:
                            os.close(stack.pop())
                        names.clear()
                        pending.extendleft(reversed(rest))
                    else:
                        pending.extendleft(reversed(target.split("/")))
                    continue
                if is_last:
                    return ResolvedPath(stack.pop(), part, names, st, area)
                if not stat.S_ISDIR(st.st_mode):
                    where = "/".join([*split_path(area.mount), *names, part])
                    raise InvalidRequest(f"/{shown(where)} is not a directory (path {_quoted(raw)})")
                if len(names) >= MAX_DEPTH:
                    raise InvalidRequest(f"path {_quoted(raw)} leads more than {MAX_DEPTH} directories deep")
                try:
                    fd = os.open(part, DIR_FLAGS, dir_fd=stack[-1])
                except OSError as exc:
                    # Swapped for a symlink or removed since the stat: a racing process.
                    raise _changed(raw, exc.strerror) from None
                stack.append(fd)
                names.append(part)
        finally:
            for fd in stack:
                os.close(fd)

    def resolve_workspace_root(self, raw: str) -> ResolvedPath:
        """Resolve ``raw`` as the root of a walk (Manifest, Export): in the workspace, existing, a final symlink not followed."""
        if raw.startswith("/") and path_under(raw, self.workspace.mount) is None:
            raise self.outside(raw)
        resolved = self.resolve(raw, follow_last=False)
        if resolved.area is not self.workspace or resolved.st is None:
            resolved.close()
            if resolved.area is not self.workspace:
                raise self.outside(raw)
            raise InvalidRequest(f"no such file or directory: {_quoted(raw)}")
        return resolved


def _check_name(part: str, raw: str) -> None:
    """Refuse a component longer than ``NAME_MAX`` bytes with a message (the kernel's is "File name too long")."""
    if len(part) * 4 > NAME_MAX:  # a character is at most 4 bytes: only then encode to count
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise InvalidRequest(
                f"a name in path {_quoted(raw)} is {size} bytes long; a name may be at most {NAME_MAX} bytes"
            )


def _changed(raw: str, why: str | None) -> InvalidRequest:
    """The error for a path whose components were swapped or removed while it was being resolved."""
    return InvalidRequest(f"path {_quoted(raw)} changed while it was resolved: {why}")


def _quoted(raw: str) -> str:
    """``raw`` for a message: readable, and shortened if it is very long."""
    text = shown(raw)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS // 2]}…{text[-_SHOWN_CHARS // 2 :]}"
