"""Checkpoints: what the sandbox's workspace holds, kept in the session store after every change.

After every tool call that may change files the ``Checkpointer`` asks the host
for what changed since its last answer (``Manifest`` with ``since``), fetches
the new contents (``Export``) into the project's blob store and appends one
``checkpoint`` event. An unchanged workspace costs one ``Manifest`` call and
writes nothing. Every new sandbox of the session (lost, expired, resumed, on
another host) starts from the newest checkpoint (``restore``).
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent import events as ev
from agent.sandbox_client import SandboxClient
from agent.workspace.tarstream import TarBuilder, chunks_from_thread
from agent.workspace.upload import normal_mode
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.workspace_rules import BUILD_OUTPUTS, DEPENDENCY_DIRS, GIT_DIR
from session.blobs import BlobNotFound
from session.checkpoints import (
    CheckpointChanges,
    FileState,
    WorkspaceState,
    apply_changes,
    diff_states,
    record_checkpoint,
    state_at,
)
from session.errors import SessionStoreError
from session.log import SessionLog

Emit = Callable[[ev.AgentEvent], Awaitable[None]]

CWD_EVENT = "cwd"
"""The log event that records where the shell went."""

PREFETCH_MAX_BYTES = 64 << 20
"""A lost sandbox's workspace up to this size is read from the store while the new sandbox starts."""

IN_MEMORY_EXPORT_BYTES = 8 << 20
"""An export up to this size is stored without a spool file or a worker thread."""


@dataclass
class WorkspaceRules:
    """What checkpoints of one session cover; kept in the session log so every later harness uses the same."""

    exclude: list[str]
    """gitignore-style patterns left out (dependencies, caches, the settings' excludes...)."""
    gitignore: bool = True
    """Whether the workspace's own ``.gitignore`` files are honoured."""
    max_file_bytes: int = 0
    """Larger files are left out (and said so); 0 = no cap."""

    @classmethod
    def for_session(cls, mode: str, git: bool, extra_exclude: list[str], max_file_bytes: int) -> WorkspaceRules:
        """The rules for a new session: dependencies always out; build outputs out unless git decides;
        ``.git/`` out in direct mode (the user's repository is the user's own history)."""
        exclude = [*DEPENDENCY_DIRS, *extra_exclude]
        if not git:
            exclude.extend(BUILD_OUTPUTS)
        if mode == "direct":
            exclude.append(GIT_DIR)
        return cls(exclude, True, max_file_bytes)

    def to_dict(self) -> dict[str, Any]:
        """For the session log."""
        return {"exclude": self.exclude, "gitignore": self.gitignore, "max_file_bytes": self.max_file_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkspaceRules:
        """From the session log."""
        return cls(list(data.get("exclude", [])), bool(data.get("gitignore", True)), int(data.get("max_file_bytes", 0)))


@dataclass
class CheckpointSummary:
    """What one checkpoint recorded."""

    seq: int
    """The checkpoint's number in the session (0 = the baseline)."""
    changed: int
    """Files added or changed."""
    removed: int
    """Files removed."""
    files: int
    """Files in the workspace after it."""


@dataclass
class RestoreSummary:
    """What a restore brought into a new sandbox."""

    seq: int
    """The checkpoint restored (-1: none)."""
    files: int
    """Files and symlinks written."""
    missing: list[str]
    """Paths whose content was not in the store."""
    seconds: float
    """How long it took."""


@dataclass
class Checkpointer:
    """Keeps one session's workspace checkpoints: takes them, and restores the newest into new sandboxes."""

    client: SandboxClient | None
    """The sandbox host's client (set when the workspace is attached to a lease)."""
    log: SessionLog
    mode: str
    """``direct`` or ``copy``."""
    rules: WorkspaceRules
    emit: Emit | None = None
    """Where notices go (a checkpoint that could not be saved, files left out)."""
    state: WorkspaceState = field(default_factory=dict)
    """The workspace as of the newest checkpoint."""
    seq: int = -1
    """The newest checkpoint's number; -1 = none yet."""
    last_tool: str = ""
    """The tool call the newest checkpoint followed (for the words of a restore)."""
    cwd: str = ""
    """The shell's directory as last recorded (a resumed session's shell goes back there)."""
    _token: str = ""
    _token_sandbox: str = ""
    _reported_skips: set[str] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _prefetched: tuple[int, list[str], asyncio.Future[list[bytes]]] | None = field(default=None, repr=False)

    def load(self) -> None:
        """Take the newest checkpoint of the log's live branch as the current state."""
        state, event = state_at(self.log)
        self.state = state
        self.seq = int(event.payload.get("seq", 0)) if event is not None else -1
        self.last_tool = str(event.payload.get("after") or "") if event is not None else ""
        self.cwd = next((e.payload.get("cwd", "") for e in reversed(self.log.live_path()) if e.type == CWD_EVENT), "")
        self._token = ""

    def note_cwd(self, cwd: str) -> None:
        """Record the shell's directory if it moved (one small event; a ``cd`` changes no file)."""
        if cwd and cwd != self.cwd:
            try:
                self.log.append(CWD_EVENT, {"cwd": cwd})
            except SessionStoreError:
                return  # the next move tries again; losing this costs only the directory on resume
            self.cwd = cwd

    def forget_host_state(self) -> None:
        """The next checkpoint compares the whole workspace with ``state`` (the host's answer may be stale)."""
        self._token = ""

    async def take(self, sandbox_id: str, *, after: str | None = None, label: str = "tool") -> CheckpointSummary | None:
        """Record what changed in the workspace since the last checkpoint; None if nothing did.

        A checkpoint that cannot be saved (disk full, say) is a notice, never an
        error: the session goes on and the next checkpoint catches up.
        """
        async with self._lock:
            try:
                return await self._take(sandbox_id, after, label)
            except SessionStoreError as exc:
                self._token = ""  # the host moved on without us: compare in full next time
                await self._notice(
                    f"Checkpoint not saved: {exc}. The session goes on; the next checkpoint tries again."
                )
                return None

    async def _take(self, sandbox_id: str, after: str | None, label: str) -> CheckpointSummary | None:
        since = self._token if self._token_sandbox == sandbox_id else ""
        assert self.client is not None, "attach the workspace to a lease first"
        response = await self.client.manifest_delta(
            sandbox_id,
            since=since,
            exclude=self.rules.exclude,
            gitignore=self.rules.gitignore,
            max_file_bytes=self.rules.max_file_bytes,
        )
        await self._report_skipped(response.skipped)
        if response.delta:
            changes = CheckpointChanges(
                set={path: fs for path, fs in _states(response.entries).items() if self.state.get(path) != fs},
                removed=[path for path in map(entry_path, response.removed) if path in self.state],
            )
        else:
            changes = diff_states(self.state, _states(response.entries))
        if not changes.set and not changes.removed and self.seq >= 0:
            self._remember(response.token, sandbox_id)
            return None
        missing = sorted(path for path, fs in changes.set.items() if fs.sha256 not in self.log.blobs)
        if missing:
            fetched = await self._fetch(sandbox_id, missing)
            for path in missing:
                got = fetched.get(path)
                if got is None:
                    del changes.set[path]  # gone between Manifest and Export: the next checkpoint sees it
                else:
                    changes.set[path] = got
        new_state = apply_changes(self.state, changes)
        seq = self.seq + 1
        record_checkpoint(
            self.log,
            changes,
            seq=seq,
            after_tool_use_id=after,
            label=label,
            files=len(new_state),
            bytes=sum(fs.size for fs in new_state.values()),
        )
        self.state, self.seq, self.last_tool = new_state, seq, after or ""
        if missing and any(path not in fetched for path in missing):
            self._token = ""
        else:
            self._remember(response.token, sandbox_id)
        return CheckpointSummary(seq, len(changes.set), len(changes.removed), len(new_state))

    def _remember(self, token: str, sandbox_id: str) -> None:
        self._token, self._token_sandbox = token, sandbox_id

    async def _fetch(self, sandbox_id: str, paths: list[str]) -> dict[str, FileState]:
        """Export ``paths`` into the blob store; what each turned out to hold (the file may have changed since the Manifest).

        A small export (the usual case: a tool changed a few files) is read in memory
        and stored here; a large one is spooled to disk and stored on a worker thread.
        """
        plain = [p for p in paths if is_utf8(p)]
        raw = [os.fsencode(p) for p in paths if not is_utf8(p)]
        assert self.client is not None
        parts: list[bytes] = []
        size = 0
        spool = None
        try:
            async for chunk in self.client.export(sandbox_id, plain, raw_paths=raw):
                if spool is None and size + len(chunk) <= IN_MEMORY_EXPORT_BYTES:
                    parts.append(chunk)
                    size += len(chunk)
                    continue
                if spool is None:
                    spool = tempfile.TemporaryFile(prefix="tether-export-")
                    await asyncio.to_thread(spool.writelines, parts)
                    parts.clear()
                await asyncio.to_thread(spool.write, chunk)
            if spool is None:
                return _store_members(io.BytesIO(b"".join(parts)), self.log)
            spool.seek(0)
            return await asyncio.to_thread(_store_members, spool, self.log)
        finally:
            if spool is not None:
                spool.close()

    async def restore(self, sandbox_id: str) -> RestoreSummary:
        """Bring the newest checkpoint into the new, empty sandbox ``sandbox_id``.

        In direct mode there is nothing to bring: the new sandbox mounts the same directory.
        """
        async with self._lock:
            self._token = ""
            started = time.perf_counter()
            if self.mode == "direct" or not self.state:
                return RestoreSummary(self.seq, 0, [], 0.0)
            missing: list[str] = []
            state = dict(self.state)
            assert self.client is not None
            prefetched, self._prefetched = self._prefetched, None
            if prefetched is not None and prefetched[0] == self.seq:
                chunks = await prefetched[2]
                missing = prefetched[1]
                await self.client.import_tar(sandbox_id, chunks)
            else:
                await self.client.import_tar(
                    sandbox_id, chunks_from_thread(lambda: tar_of_state(state, self.log, missing))
                )
            if missing:
                shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                await self._notice(
                    f"Restore could not bring back {len(missing)} file(s) whose content is missing "
                    f"from the session store: {shown}."
                )
            return RestoreSummary(self.seq, len(state) - len(missing), missing, time.perf_counter() - started)

    def prefetch(self) -> None:
        """A sandbox was lost: start reading the newest checkpoint's files now, while its replacement starts.

        Only a workspace that fits in ``PREFETCH_MAX_BYTES`` is read ahead; a larger one streams at restore.
        """
        if self._prefetched is not None and self._prefetched[0] == self.seq:
            return  # already under way for this very checkpoint
        self._prefetched = None
        if self.mode == "direct" or not self.state:
            return
        if sum(fs.size for fs in self.state.values()) > PREFETCH_MAX_BYTES:
            return
        state: WorkspaceState = dict(self.state)
        missing: list[str] = []
        built = asyncio.ensure_future(asyncio.to_thread(lambda: list(tar_of_state(state, self.log, missing))))
        # Retrieved here if no restore ever asks for it (the replacement failed): no stray warning.
        built.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._prefetched = (self.seq, missing, built)

    async def write(self, sandbox_id: str, changes: CheckpointChanges) -> None:
        """Make the sandbox's workspace hold ``changes`` (from the blob store); the caller records them."""
        assert self.client is not None
        async with self._lock:
            self._token = ""
            if changes.set:
                partial = dict(changes.set)
                missing: list[str] = []
                await self.client.import_tar(
                    sandbox_id, chunks_from_thread(lambda: tar_of_state(partial, self.log, missing))
                )
                if missing:
                    await self._notice(
                        f"Could not restore {len(missing)} file(s) whose content is missing from the session store: {', '.join(missing[:10])}."
                    )
            if changes.removed:
                result = await self.client.exec(
                    sandbox_id, argv=["rm", "-f", "--", *changes.removed], timeout_ms=60_000
                )
                if result.exit_code != 0:
                    await self._notice(
                        f"Some files could not be removed: {result.stderr.decode(errors='replace')[:500]}"
                    )

    async def _report_skipped(self, skipped) -> None:
        fresh = [item for item in skipped if item.path not in self._reported_skips]
        if not fresh:
            return
        self._reported_skips.update(item.path for item in fresh)
        shown = ", ".join(f"{item.path} ({item.reason})" for item in fresh[:10])
        more = f" and {len(fresh) - 10} more" if len(fresh) > 10 else ""
        await self._notice(f"Not in checkpoints: {shown}{more}.")

    async def _notice(self, text: str) -> None:
        if self.emit is not None:
            await self.emit(ev.Status(text))


def entry_path(entry: pb.ManifestEntry) -> str:
    """The exact path of a manifest entry (non-UTF-8 names as surrogate escapes)."""
    return os.fsdecode(entry.raw_path) if entry.raw_path else entry.path


def _states(entries) -> dict[str, FileState]:
    return {entry_path(e): FileState(e.sha256, normal_mode(e.mode), e.size) for e in entries}


def is_utf8(path: str) -> bool:
    """Whether ``path`` is valid UTF-8 (no surrogate escapes of undecodable bytes)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _store_members(spool, log: SessionLog) -> dict[str, FileState]:
    """Every file and symlink of the tar in ``spool``, stored as blobs; their states by path."""
    found: dict[str, FileState] = {}
    with log.blobs.batch() as batch, tarfile.open(fileobj=spool, mode="r|") as tar:
        for member in tar:
            if member.issym():
                data = member.linkname.encode("utf-8", "surrogateescape")
                mode = 0o120000 | (member.mode & 0o777)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                data = source.read()
                mode = 0o100000 | (member.mode & 0o777)
            else:
                continue
            found[member.name] = FileState(batch.put(data), mode, len(data))
    return found


def tar_of_state(state: WorkspaceState, log: SessionLog, missing: list[str]) -> Iterator[bytes]:
    """A tar stream of every file of ``state`` from the blob store; paths whose blob is gone go to ``missing``."""
    tar = TarBuilder()
    for path in sorted(state):
        fs = state[path]
        try:
            data = log.get_blob(fs.sha256)
        except BlobNotFound:
            missing.append(path)
            continue
        tar.add(path, fs.mode, data)
        yield from tar.ready()
    yield from tar.close()
