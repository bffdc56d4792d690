"""The harness's hold on one sandbox: which host, which sandbox, from which recipe.

The sandbox is provisioned on first use (or ahead of time with ``start``), so
a session that never calls a tool never waits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent import events as ev
from agent.sandbox_client import ExecResult, SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

RUN_LABEL = "tether.run"
"""Label on a sandbox provisioned on a shared host: the pid of the run that holds it, so a cleaner can
destroy it if that run is killed before it can release it."""


@dataclass
class SandboxLease:
    """A sandbox held for a session: host, sandbox id, recipe, generation."""

    client: SandboxClient
    host: str
    """The host's address as the user gave it (for notices and the session log)."""
    recipe: pb.Recipe
    info: pb.SandboxInfo | None = None
    generation: int = 0
    """How many sandboxes this lease has provisioned (1 = the first)."""
    cwd: str = ""
    """The Bash tool's working directory; persists between calls."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels added to the recipe's when provisioning (not part of the recipe itself)."""
    programs: dict[tuple[str, str], str] = field(default_factory=dict)
    """Programs tools looked for in a sandbox: ``(sandbox id, name)`` → path, "" when it has none.
    Keyed by sandbox id, so a replacement sandbox is looked at afresh."""
    on_change: Callable[[str, dict[str, Any]], None] | None = None
    """Told of every sandbox event (``lost``, ``reprovisioned``) so the session log can keep it."""
    workspace_dir: str = ""
    """A direct workspace: the host directory every sandbox of this lease mounts (empty = a fresh one)."""
    prepare: Callable[[pb.SandboxInfo], Awaitable[None]] | None = None
    """Run on every new sandbox before any tool may use it (the workspace's upload or restore)."""
    on_replace: Callable[[], None] | None = None
    """Called the moment a replacement begins (the workspace starts reading its checkpoint then)."""
    last_loss: str = ""
    """Why the last sandbox was replaced (for the notice the replacement gives)."""
    state: str = "starting"
    """What the harness last saw of the sandbox: ``starting``, ``ready``, ``lost``, ``restoring``, ``unreachable``."""
    on_state: Callable[[ev.SandboxState], None] | None = None
    """Told of every change of ``state`` the lease makes itself (the driver's status bar listens)."""
    _provisioning: asyncio.Task | None = field(default=None, repr=False)

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        if self.on_state is not None:
            self.on_state(ev.SandboxState(state, self.host, detail=detail))

    def note_state(self, state: str, detail: str = "") -> None:
        """A state seen from outside (the watch's heartbeat), which announces it itself."""
        self.state = state

    @property
    def sandbox_id(self) -> str:
        """The current sandbox's id (provision first)."""
        assert self.info is not None, "sandbox not provisioned yet"
        return self.info.sandbox_id

    @property
    def workdir(self) -> str:
        """The workspace path as commands in the sandbox see it."""
        return self.info.workdir if self.info is not None else (self.recipe.workdir or "/workspace")

    # ----- calls bound to the current sandbox: tools never handle a sandbox id

    def exec_stream(self, **command: Any) -> AsyncGenerator[pb.ExecEvent, None]:
        """``SandboxClient.exec_stream`` in the current sandbox (shell or argv, cwd, timeout_ms, ...)."""
        return self.client.exec_stream(self.sandbox_id, **command)

    async def exec(self, **command: Any) -> ExecResult:
        """``SandboxClient.exec`` in the current sandbox: run a command to the end."""
        return await self.client.exec(self.sandbox_id, **command)

    async def read_file(self, path: str, offset: int = 0, length: int = 0) -> bytes:
        """The bytes of a file in the current sandbox (``length`` 0 = to the end)."""
        return await self.client.read_file(self.sandbox_id, path, offset=offset, length=length)

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> pb.FileInfo:
        """Write a file in the current sandbox, atomically, creating its parents."""
        return await self.client.write_file(self.sandbox_id, path, data, mode=mode)

    async def stat(self, path: str) -> pb.FileInfo:
        """Describe a path in the current sandbox."""
        return await self.client.stat(self.sandbox_id, path)

    async def list_dir(self, path: str) -> list[pb.FileInfo]:
        """The entries of a directory in the current sandbox."""
        return await self.client.list_dir(self.sandbox_id, path)

    def program(self, name: str) -> str | None:
        """Where the current sandbox has program ``name`` ("" = it has none; None = not looked for yet)."""
        return self.programs.get((self.sandbox_id, name))

    def remember_program(self, name: str, path: str) -> None:
        """Note where the current sandbox has ``name`` (a replacement sandbox is looked at afresh)."""
        self.programs[(self.sandbox_id, name)] = path

    def start(self) -> None:
        """Begin provisioning in the background."""
        if self._provisioning is None:
            self._provisioning = asyncio.ensure_future(self._provision())

    async def ready(self) -> pb.SandboxInfo:
        """The provisioned sandbox, provisioning it now if needed.

        A provisioning that failed is tried again here, so one bad moment of the
        host does not fail every later call.
        """
        task = self._provisioning
        if task is not None and task.done() and (task.cancelled() or task.exception() is not None):
            self._provisioning = None
        self.start()
        assert self._provisioning is not None
        return await asyncio.shield(self._provisioning)

    async def _provision(self) -> pb.SandboxInfo:
        self._set_state("starting" if self.generation == 0 else "restoring")
        try:
            info = await self._provision_and_prepare()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._set_state("unreachable", str(exc))
            raise
        self._set_state("ready")
        return info

    async def _provision_and_prepare(self) -> pb.SandboxInfo:
        recipe = self.recipe
        if self.labels:
            recipe = pb.Recipe()
            recipe.CopyFrom(self.recipe)
            recipe.labels.update(self.labels)
        info = await self.client.provision(recipe, request_id=str(uuid.uuid4()), workspace_dir=self.workspace_dir)
        try:
            if self.prepare is not None:
                await self.prepare(info)
        except BaseException:
            # A sandbox whose workspace could not be prepared must not be used, nor left behind.
            with contextlib.suppress(BaseException):
                await self.client.destroy(info.sandbox_id)
            raise
        previous_cwd = self.cwd  # the last sandbox's, or a resumed session's from its log
        self.info = info
        self.generation += 1
        self.cwd = info.workdir
        if previous_cwd and previous_cwd != info.workdir:
            # Back where the shell was, if the restored workspace still has that directory.
            with contextlib.suppress(Exception):
                if (await self.client.stat(info.sandbox_id, previous_cwd)).kind == pb.FileInfo.DIRECTORY:
                    self.cwd = previous_cwd
        return info

    def begin_replace(self, reason: str, lost_id: str | None = None) -> asyncio.Future[pb.SandboxInfo]:
        """The sandbox ``lost_id`` is gone: start provisioning a new one from the same recipe, now.

        Returns at once; the next ``ready()`` waits for the new sandbox, so the
        replacement runs while the model reads the error. Callers that saw the
        same loss share one replacement: if the lease has already moved past
        ``lost_id``, or a replacement is under way, that is what is returned.
        """
        task = self._provisioning
        if task is not None and not task.done():
            return asyncio.shield(task)  # a replacement is already on its way
        if lost_id is not None and self.info is not None and self.info.sandbox_id != lost_id:
            done: asyncio.Future[pb.SandboxInfo] = asyncio.get_running_loop().create_future()
            done.set_result(self.info)
            return done
        lost = self.info.sandbox_id if self.info is not None else ""
        self.last_loss = reason
        self._set_state("lost", reason)
        if self.on_replace is not None:
            self.on_replace()
        if self.on_change is not None:
            self.on_change("lost", {"sandbox_id": lost, "reason": reason, "generation": self.generation})
        self._provisioning = asyncio.ensure_future(self._provision())

        def logged(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is None and self.on_change is not None:
                info = task.result()
                self.on_change(
                    "reprovisioned", {"sandbox_id": info.sandbox_id, "replaces": lost, "generation": self.generation}
                )

        self._provisioning.add_done_callback(logged)
        return asyncio.shield(self._provisioning)

    async def replace(self, reason: str, lost_id: str | None = None) -> pb.SandboxInfo:
        """``begin_replace`` and wait for the new sandbox."""
        return await self.begin_replace(reason, lost_id)

    async def release(self) -> None:
        """Destroy the sandbox if one was made; never raises."""
        task, self._provisioning = self._provisioning, None
        if task is None:
            return
        if not task.done():
            # Closing while the sandbox is still being made (quit during start-up): stop waiting for it.
            # The host's own clean-up (shutdown, idle TTL) takes what the cancelled Provision made.
            task.cancel()
        try:
            info = await task
            await self.client.destroy(info.sandbox_id)
        except BaseException:  # the host may be gone already; nothing to release then
            pass
