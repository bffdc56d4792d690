"""Every tenant's live sandboxes: making them (idempotent, within quotas), finding, marking busy, reaping, destroying.

A tenant sees only its own sandboxes: another tenant's is as absent as a
destroyed one. A sandbox running a command or a transfer is busy and never
reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox import workspace as ws
from remote_sandbox.config import HostConfig
from remote_sandbox.manifest import ManifestState
from remote_sandbox.providers.base import (
    SPILL_MOUNT,
    InvalidRequest,
    LimitExceeded,
    PermissionDenied,
    Provider,
    SandboxNotFound,
    SandboxRecord,
)

log = logging.getLogger("remote_sandbox.server")  # the host's one logger of its own events, as operators know it

DEFAULT_WORKDIR = "/workspace"
"""The workspace path in the sandbox when the recipe names none."""

KEPT_DIRECT_CACHES = 32
"""Direct workspaces whose hash caches outlive their sandboxes (least recently provisioned go first)."""

_FORBIDDEN_WORKDIRS = ("/proc", "/dev", "/sys", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


T = TypeVar("T")

RequestKey = tuple[str, str, str]
"""(tenant, request_id, workspace_dir): the same key is the same Provision."""


def now_ms() -> int:
    """Wall-clock time in milliseconds, as sandboxes' timestamps are kept."""
    return int(time.time() * 1000)


@dataclass
class SandboxEntry:
    """A live sandbox as the host tracks it."""

    record: SandboxRecord
    """What the provider knows of it."""
    request_key: RequestKey | None = None
    """The Provision that made it, when that carried a request id."""
    active: int = 0
    """Commands and transfers running now; an active sandbox is never reaped."""
    execs: int = 0
    """Commands running now (bounded by ``max_execs_per_sandbox``)."""
    manifests: ManifestState = field(default_factory=ManifestState)
    """The hash cache and the remembered Manifest answers of this sandbox."""

    @property
    def workspace(self) -> ws.Workspace:
        """File operations on this sandbox's workspace."""
        return ws.Workspace(self.record)

    def touch(self) -> None:
        """Mark the sandbox as used now."""
        self.record.last_used_unix_ms = now_ms()


class SandboxRegistry:
    """The live sandboxes of every tenant, and the rules for making and keeping them."""

    def __init__(self, config: HostConfig, state_dir: Path) -> None:
        """Keep sandboxes under ``state_dir`` within ``config``'s limits; ``provider`` is set before the first use."""
        self.config = config
        """The limits and allowed workspace roots."""
        self.state_dir = state_dir
        """Sandboxes' own directories live under ``state_dir/sandboxes``."""
        self.provider: Provider | None = None
        """What makes, runs and destroys the sandboxes (set once the host has started it)."""
        self.sandboxes: dict[str, SandboxEntry] = {}
        """Live sandboxes by id, every tenant's."""
        self.workspace_roots = [Path(root).expanduser().resolve() for root in config.allow_workspace_roots]
        """Resolved directories a direct workspace may be under."""
        self._in_flight: dict[RequestKey, asyncio.Future[SandboxEntry]] = {}
        """Provisions by request key, being made or made (a made one answers a retry), until destroyed."""
        self._pending: dict[str, int] = {}
        """Sandboxes being made, per tenant: they count against the quota too."""
        self._direct_manifests: OrderedDict[tuple[str, str], ManifestState] = OrderedDict()
        """Hash caches of direct workspaces by (tenant, directory), kept across their sandboxes."""

    @property
    def _provider(self) -> Provider:
        """The provider, which the host has set by the time any sandbox is asked for."""
        assert self.provider is not None, "the host sets the provider before serving"
        return self.provider

    # ----- finding

    def get(self, tenant: str, sandbox_id: str) -> SandboxEntry:
        """``tenant``'s sandbox ``sandbox_id``, marked used now; ``SandboxNotFound`` for anyone else's."""
        entry = self.sandboxes.get(sandbox_id)
        if entry is None or entry.record.tenant != tenant:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r} on this host (destroyed, expired, or never made)")
        entry.touch()
        return entry

    def of_tenant(self, tenant: str) -> list[SandboxEntry]:
        """``tenant``'s sandboxes, oldest first."""
        entries = [e for e in self.sandboxes.values() if e.record.tenant == tenant]
        return sorted(entries, key=lambda e: e.record.created_unix_ms)

    @contextlib.contextmanager
    def busy(self, entry: SandboxEntry) -> Iterator[None]:
        """Mark ``entry`` busy (never reaped) while the block runs, and used when it ends."""
        entry.active += 1
        try:
            yield
        finally:
            entry.active -= 1
            entry.touch()

    async def while_busy(self, entry: SandboxEntry, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """``items``, with ``entry`` marked busy while they are taken; closes ``items`` when closed."""
        with self.busy(entry):
            async with contextlib.aclosing(items):
                async for item in items:
                    yield item

    @contextlib.contextmanager
    def running_command(self, entry: SandboxEntry) -> Iterator[None]:
        """Count a command in ``entry`` while the block runs; ``LimitExceeded`` past ``max_execs_per_sandbox``."""
        limit = self.config.max_execs_per_sandbox
        if entry.execs >= limit:
            raise LimitExceeded(
                f"limit reached: max execs per sandbox is {limit}, and sandbox {entry.record.sandbox_id} "
                f"already runs {entry.execs} commands; wait for one to finish"
            )
        # Counted before the caller's first await, so concurrent calls cannot all pass the check.
        entry.execs += 1
        try:
            with self.busy(entry):
                yield
        finally:
            entry.execs -= 1

    # ----- making

    async def provision(
        self, tenant: str, recipe: pb.Recipe, request_id: str = "", workspace_dir: str = ""
    ) -> SandboxEntry:
        """Make a sandbox for ``tenant``; the same ``request_id`` (and directory) gets the same sandbox.

        ``workspace_dir`` names a direct workspace on this host ("" = a fresh one).
        """
        directory = self.check_workspace_dir(workspace_dir)
        if not request_id:
            return await self._make_within_quota(tenant, recipe, None, directory)
        # The directory is part of the request: the same id naming another directory is another request.
        key = (tenant, request_id, workspace_dir)
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._make_within_quota(tenant, recipe, key, directory))
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._forget_failed(key, done))
        # Shielded: a client that gives up mid-provision can retry with the same
        # request_id and get the sandbox that was being made.
        entry = await asyncio.shield(task)
        return self.get(tenant, entry.record.sandbox_id)

    def _forget_failed(self, key: RequestKey, task: asyncio.Future[SandboxEntry]) -> None:
        """Forget a failed attempt so the same request id can be retried."""
        if self._in_flight.get(key) is task and (task.cancelled() or task.exception() is not None):
            del self._in_flight[key]

    def check_workspace_dir(self, requested: str) -> Path | None:
        """The resolved directory a Provision asks to use as its workspace, None for a fresh one; refuse what is not allowed."""
        if not requested:
            return None
        if not self.workspace_roots:
            # Asked before anything about the path is looked at: a remote client learns nothing of this host's disk.
            raise PermissionDenied(
                "this sandbox host does not accept direct workspaces; start it with "
                "--allow-workspace-root DIR to allow directories under DIR"
            )
        if "\0" in requested or not requested.startswith("/"):
            raise InvalidRequest(f"workspace_dir {requested!r} must be an absolute path")
        resolved = Path(os.path.realpath(requested))
        if not any(resolved == root or root in resolved.parents for root in self.workspace_roots):
            allowed = ", ".join(str(root) for root in self.workspace_roots)
            raise PermissionDenied(
                f"workspace_dir {requested} is not under an allowed workspace root ({allowed}); "
                "the host operator can allow more with --allow-workspace-root DIR"
            )
        if not resolved.is_dir():
            raise InvalidRequest(f"workspace_dir {requested} is not an existing directory on the sandbox host")
        return resolved

    async def _make_within_quota(
        self, tenant: str, recipe: pb.Recipe, key: RequestKey | None, workspace_dir: Path | None
    ) -> SandboxEntry:
        """Make a sandbox unless ``tenant`` has ``max_sandboxes_per_tenant`` already."""
        # Sandboxes still being made count too: concurrent Provisions must not all pass.
        pending = self._pending.get(tenant, 0)
        owned = sum(1 for e in self.sandboxes.values() if e.record.tenant == tenant) + pending
        limit = self.config.max_sandboxes_per_tenant
        if owned >= limit:
            raise LimitExceeded(
                f"limit reached: max sandboxes per tenant is {limit}, and this tenant already has {owned}"
                f"{f' ({pending} being made)' if pending else ''}; destroy some first"
            )
        workdir = check_workdir(recipe.workdir or DEFAULT_WORKDIR)
        self._pending[tenant] = pending + 1
        try:
            return await self._make(tenant, recipe, key, workdir, workspace_dir)
        finally:
            self._pending[tenant] -= 1
            if not self._pending[tenant]:
                del self._pending[tenant]

    async def _make(
        self, tenant: str, recipe: pb.Recipe, key: RequestKey | None, workdir: str, workspace_dir: Path | None
    ) -> SandboxEntry:
        """Make the directories and the provider's sandbox, and register it."""
        sandbox_id = "sb-" + secrets.token_hex(6)
        root = ws.sandbox_root(self.state_dir, sandbox_id)
        workspace = await asyncio.to_thread(ws.create_sandbox_dirs, root, workspace_dir is None)
        now = now_ms()
        record = SandboxRecord(
            sandbox_id=sandbox_id,
            tenant=tenant,
            recipe=recipe,
            workspace=workspace_dir or workspace,
            workdir=workdir,
            isolation="",
            created_unix_ms=now,
            last_used_unix_ms=now,
            # Always the host's own directory, so destroying the sandbox never touches the user's.
            state=root,
            workspace_dir=str(workspace_dir or ""),
        )
        try:
            await self._provider.provision(record)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._provider.destroy(record)
            await asyncio.to_thread(shutil.rmtree, root, True)
            raise
        entry = SandboxEntry(record, key, manifests=self._manifest_state(tenant, workspace_dir))
        self.sandboxes[sandbox_id] = entry
        log.info("provisioned %s for %s (%s)", sandbox_id, tenant, record.isolation)
        return entry

    def adopt(self, record: SandboxRecord) -> SandboxEntry:
        """Track a sandbox an earlier run of this host made and left running (as if just used: not reaped at once)."""
        workspace_dir = Path(record.workspace_dir) if record.workspace_dir else None
        entry = SandboxEntry(record, None, manifests=self._manifest_state(record.tenant, workspace_dir))
        entry.touch()
        self.sandboxes[record.sandbox_id] = entry
        return entry

    def _manifest_state(self, tenant: str, workspace_dir: Path | None) -> ManifestState:
        """A fresh hash cache, or the one a direct workspace's earlier sandboxes filled.

        Every ``tether -p`` in a project is a new session with a new sandbox of the same
        directory: keeping the cache spares re-hashing the whole project each time.
        """
        if workspace_dir is None:
            return ManifestState()
        key = (tenant, str(workspace_dir))
        state = self._direct_manifests.pop(key, None) or ManifestState()
        self._direct_manifests[key] = state
        while len(self._direct_manifests) > KEPT_DIRECT_CACHES:
            self._direct_manifests.popitem(last=False)
        return state

    # ----- ending

    async def destroy(self, entry: SandboxEntry) -> None:
        """Destroy one sandbox: its processes or container, then its directory."""
        record = entry.record
        self.sandboxes.pop(record.sandbox_id, None)
        if entry.request_key is not None:
            self._in_flight.pop(entry.request_key, None)
        try:
            await self._provider.destroy(record)
        finally:
            await asyncio.to_thread(shutil.rmtree, record.state_root, True)

    async def reap_idle(self, now: int | None = None) -> list[str]:
        """Destroy sandboxes idle past their recipe's TTL (0 = never) as of ``now`` (ms); return their ids."""
        now = now_ms() if now is None else now
        reaped = []
        for entry in list(self.sandboxes.values()):
            ttl_ms = entry.record.recipe.idle_ttl_seconds * 1000
            if ttl_ms and not entry.active and now - entry.record.last_used_unix_ms > ttl_ms:
                try:
                    await self.destroy(entry)
                    reaped.append(entry.record.sandbox_id)
                    # Logged once it is gone, directory included: tests and operators wait on this line.
                    log.info(
                        "destroyed idle sandbox %s: unused for more than %d s", entry.record.sandbox_id, ttl_ms // 1000
                    )
                except Exception:
                    log.exception("could not destroy idle sandbox %s", entry.record.sandbox_id)
        return reaped

    async def close(self, destroy: bool) -> None:
        """Stop provisions in flight; destroy every sandbox if ``destroy``, else leave them on disk."""
        for task in list(self._in_flight.values()):
            task.cancel()
        if destroy:
            for entry in list(self.sandboxes.values()):
                with contextlib.suppress(Exception):
                    await self.destroy(entry)
        elif self.sandboxes:
            log.info("leaving %d sandbox(es) in %s", len(self.sandboxes), self.state_dir)


def check_workdir(workdir: str) -> str:
    """The recipe's workdir, normalised, or InvalidRequest if it cannot hold a workspace."""
    if "\0" in workdir or not workdir.startswith("/"):
        raise InvalidRequest(f"recipe workdir {workdir!r} must be an absolute path")
    normal = posixpath.normpath(workdir)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if normal == "/" or any(normal == d or normal.startswith(d + "/") for d in _FORBIDDEN_WORKDIRS):
        raise InvalidRequest(f"recipe workdir {workdir!r} would hide or sit in a system directory; use e.g. /workspace")
    spill = SPILL_MOUNT
    if normal == spill or normal.startswith(spill + "/") or spill.startswith(normal + "/"):
        raise InvalidRequest(f"recipe workdir {workdir!r} overlaps the spill area {spill}")
    return normal
