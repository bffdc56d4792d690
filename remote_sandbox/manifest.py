"""Manifests of a workspace: every file and symlink with its sha256, answered in full or as a delta.

A sandbox keeps a ``ManifestState``: a hash cache (path -> the stat that was
hashed and its sha256, so an unchanged file is never read again) and the last
few answers by token, so a request with ``since`` gets only what changed.

The walk is the hot path (a delta of an unchanged 10,000-file tree must cost
about as much as a bare ``scandir`` + ``stat`` of it): it goes through
directory descriptors with ``os.scandir(fd)``, stats each file once, keeps
names as ``str`` (surrogate-escaped bytes) until one is sent, and builds no
protobuf for an entry that did not change.

Timestamps are trusted as git trusts them: a file whose mtime or ctime falls
within ``RACY_NS`` before a walk started may still be written to within the
same timestamp tick, with the same size, and look unchanged afterwards; its
cache entry is marked untrusted and it is hashed again next time.

All functions here block; the server runs them on worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.workspace_rules import IgnoreRules, compile_rules
from remote_sandbox.paths import DIR_FLAGS

RACY_NS = 1_000_000_000
"""A file changed less than this before a walk started is hashed again by the next walk."""

KEPT_ANSWERS = 4
"""Answers (tokens) remembered per sandbox; an older ``since`` gets a full answer."""

GITIGNORE_MAX_BYTES = 1 << 20
"""A larger ``.gitignore`` is read only this far."""

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# A file as a walk saw it: ((st_ino, st_size, st_mtime_ns, st_ctime_ns), st_mode, sha256 hex, trusted).
# Tuples, shared between the cache and the answers: an unchanged file is the very same object.
Seen = tuple[tuple[int, int, int, int], int, str, bool]


@dataclass(frozen=True)
class ManifestRules:
    """What a Manifest request asks to list; an answer is a delta base only for the same rules."""

    paths: tuple[str, ...] = ()
    """Workspace-relative roots of the walk; empty = the whole workspace."""
    exclude: tuple[str, ...] = ()
    """gitignore-style patterns left out."""
    gitignore: bool = False
    """Whether ``.gitignore`` files found on the way count too."""
    max_file_bytes: int = 0
    """Regular files larger than this are skipped; 0 = no limit."""

    @classmethod
    def of(cls, request: pb.ManifestRequest) -> ManifestRules:
        """The rules of ``request``."""
        return cls(tuple(request.paths), tuple(request.exclude), request.gitignore, request.max_file_bytes)


@dataclass
class _Answer:
    """A manifest as answered, remembered under its token."""

    rules: ManifestRules
    """The rules it was made with."""
    files: dict[str, Seen]
    """Path (surrogate-escaped) -> what was seen."""


@dataclass
class ManifestState:
    """One sandbox's hash cache and remembered answers."""

    cache: dict[str, Seen] = field(default_factory=dict)
    """Path -> the stat last hashed and its digest."""
    answers: OrderedDict[str, _Answer] = field(default_factory=OrderedDict)
    """Token -> answer, oldest first, at most ``KEPT_ANSWERS``."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by one manifest at a time: the cache is shared."""


@dataclass
class _Walk:
    """What one walk gathers."""

    cache: dict[str, Seen]
    """The sandbox's hash cache (read and updated)."""
    racy_after: int
    """An mtime or ctime (ns) at or past this is not trusted next time."""
    max_file_bytes: int
    """Regular files larger than this are skipped; 0 = no limit."""
    gitignore: bool
    """Read ``.gitignore`` files on the way."""
    files: dict[str, Seen] = field(default_factory=dict)
    """Path -> what was seen, this walk."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of files seen but not listed."""


def manifest(root_fd: int, request: pb.ManifestRequest, state: ManifestState) -> pb.ManifestResponse:
    """Answer ``request`` for the workspace whose root directory is open as ``root_fd`` (not closed here).

    ``request.paths`` must already be checked to stay inside the workspace
    (``SandboxPaths.resolve_workspace_root``); they are walked without following symlinks.
    """
    rules = ManifestRules.of(request)
    with state.lock:
        walk = _Walk(state.cache, time.time_ns() - RACY_NS, rules.max_file_bytes, rules.gitignore)
        base = IgnoreRules(compile_rules(list(rules.exclude)))
        for rel in _roots(rules.paths):
            _walk_root(root_fd, rel, base, walk)
        since = state.answers.get(request.since) if request.since else None
        token = secrets.token_hex(12)
        state.answers[token] = _Answer(rules, walk.files)
        while len(state.answers) > KEPT_ANSWERS:
            state.answers.popitem(last=False)
        response = pb.ManifestResponse(
            token=token, skipped=[pb.SkippedPath(path=_shown(p)[0], reason=r) for p, r in walk.skipped]
        )
        if since is None or since.rules != rules:
            response.entries.extend(_entry(rel, seen) for rel, seen in sorted(walk.files.items()))
            return response
        response.delta = True
        old = since.files
        changed = []
        for rel, seen in walk.files.items():
            before = old.get(rel)
            if before is seen:
                continue
            if before is None or before[2] != seen[2] or before[1] != seen[1] or before[0][1] != seen[0][1]:
                changed.append(rel)
        changed.sort()
        response.entries.extend(_entry(rel, walk.files[rel]) for rel in changed)
        if len(old) != len(walk.files) - sum(1 for rel in changed if rel not in old):
            gone = sorted(rel for rel in old if rel not in walk.files)
            for rel in gone:
                state.cache.pop(rel, None)
                path, raw = _shown(rel)
                response.removed.append(pb.ManifestEntry(path=path, raw_path=raw))
        return response


def _roots(paths: tuple[str, ...]) -> list[str]:
    """The distinct walk roots, normalised ("" = the whole workspace)."""
    roots = []
    for raw in paths or ("",):
        rel = "/".join(part for part in raw.split("/") if part not in ("", "."))
        if rel not in roots:
            roots.append(rel)
    return roots


def _walk_root(root_fd: int, rel: str, base: IgnoreRules, walk: _Walk) -> None:
    """Walk one root: the rules of every directory above it apply, as in git."""
    parts = rel.split("/") if rel else []
    rules = base
    fd = os.dup(root_fd)
    try:
        if walk.gitignore:
            rules = rules.below("", _read_gitignore(fd))
        for depth, part in enumerate(parts):
            prefix = "/".join(parts[: depth + 1])
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                if depth == len(parts) - 1 and not rules.ignored(prefix, False):
                    _see_file(fd, part, prefix, st, walk)
                return
            if rules.ignored(prefix, True):
                return
            sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
            if walk.gitignore:
                rules = rules.below(prefix, _read_gitignore(fd))
    except FileNotFoundError:
        return  # the server checked it exists; removed since
    except BaseException:
        os.close(fd)
        raise
    _walk_dir(fd, rel, rules, walk)


def _walk_dir(dir_fd: int, rel: str, rules: IgnoreRules, walk: _Walk) -> None:
    """Everything below the open directory ``dir_fd`` (which this closes), depth first."""
    prefix = rel + "/" if rel else ""
    checking = rules.root is not None or bool(rules.nested)
    subdirs = []
    try:
        with os.scandir(dir_fd) as scan:
            entries = list(scan)
        if walk.gitignore and any(entry.name == ".gitignore" for entry in entries):
            rules = rules.below(rel, _read_gitignore(dir_fd))
            checking = rules.root is not None or bool(rules.nested)
        cache, files = walk.cache, walk.files
        for entry in entries:
            child = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not (checking and rules.ignored(child, True)):
                        subdirs.append((entry.name, child))
                    continue
                if checking and rules.ignored(child, False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            seen = cache.get(child)
            if seen is not None and seen[3] and seen[0] == key and seen[1] == st.st_mode:
                files[child] = seen
                continue
            _see_file(dir_fd, entry.name, child, st, walk)
        for name, child in subdirs:
            try:
                sub_fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # replaced by a symlink or removed mid-walk
            # git never applies .gitignore patterns to its own directory (a `logs/` or `*.pack`
            # line must not drop repository files): only the request's own excludes hold there.
            inner = IgnoreRules(rules.root) if child == ".git" and rules.nested else rules
            _walk_dir(sub_fd, child, inner, walk)
    finally:
        os.close(dir_fd)


def _see_file(dir_fd: int, name: str, rel: str, st: os.stat_result, walk: _Walk) -> None:
    """Hash one non-directory (or list it as skipped) and remember it in the walk and the cache."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return  # replaced mid-walk
        digest = hashlib.sha256(os.fsencode(target)).hexdigest()
    elif stat.S_ISREG(mode):
        if walk.max_file_bytes and st.st_size > walk.max_file_bytes:
            walk.skipped.append((rel, "too large"))
            return
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError:
            walk.skipped.append((rel, "unreadable"))
            return
        with os.fdopen(fd, "rb") as handle:
            # The stat of what is hashed: a file replaced since the listing is seen as it is now.
            st = os.fstat(fd)
            mode = st.st_mode
            if not stat.S_ISREG(mode):
                return
            try:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError:
                walk.skipped.append((rel, "unreadable"))
                return
    else:
        walk.skipped.append((rel, _special_reason(mode)))
        return
    trusted = st.st_mtime_ns < walk.racy_after and st.st_ctime_ns < walk.racy_after
    seen: Seen = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), mode, digest, trusted)
    walk.cache[rel] = seen
    walk.files[rel] = seen


def _special_reason(mode: int) -> str:
    """Why a special file is skipped, in the contract's words."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "unreadable"


def _read_gitignore(dir_fd: int) -> str | None:
    """The text of ``.gitignore`` in ``dir_fd``, if it is a readable regular file."""
    try:
        fd = os.open(".gitignore", _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with contextlib.suppress(OSError):
            return handle.read(GITIGNORE_MAX_BYTES).decode("utf-8", "replace")
    return None


def _shown(rel: str) -> tuple[str, bytes]:
    """``(path, raw_path)`` of a surrogate-escaped name: raw bytes only when they are not UTF-8."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(rel)
        return raw.decode("utf-8", "replace"), raw
    return rel, b""


def _entry(rel: str, seen: Seen) -> pb.ManifestEntry:
    """The ManifestEntry of one file."""
    (_, size, mtime_ns, _), mode, digest, _ = seen
    path, raw = _shown(rel)
    return pb.ManifestEntry(path=path, raw_path=raw, size=size, mode=mode, mtime_ns=mtime_ns, sha256=digest)
