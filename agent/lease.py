"""The harness's hold on one sandbox: which host, which sandbox, from which recipe.

The sandbox is provisioned on first use (or ahead of time with ``start``), so
a session that never calls a tool never waits for one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.sandbox_client import SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb


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
    _provisioning: asyncio.Task | None = field(default=None, repr=False)

    @property
    def sandbox_id(self) -> str:
        """The current sandbox's id (provision first)."""
        assert self.info is not None, "sandbox not provisioned yet"
        return self.info.sandbox_id

    @property
    def workdir(self) -> str:
        """The workspace path as commands in the sandbox see it."""
        return self.info.workdir if self.info is not None else (self.recipe.workdir or "/workspace")

    def start(self) -> None:
        """Begin provisioning in the background."""
        if self._provisioning is None:
            self._provisioning = asyncio.ensure_future(self._provision())

    async def ready(self) -> pb.SandboxInfo:
        """The provisioned sandbox, provisioning it now if needed."""
        self.start()
        assert self._provisioning is not None
        return await asyncio.shield(self._provisioning)

    async def _provision(self) -> pb.SandboxInfo:
        recipe = self.recipe
        if self.labels:
            recipe = pb.Recipe()
            recipe.CopyFrom(self.recipe)
            recipe.labels.update(self.labels)
        info = await self.client.provision(recipe, request_id=str(uuid.uuid4()))
        self.info = info
        self.generation += 1
        self.cwd = info.workdir
        return info

    async def replace(self, reason: str, lost_id: str | None = None) -> pb.SandboxInfo:
        """The sandbox ``lost_id`` is gone: provision a new one from the same recipe and say so.

        Callers that saw the same loss share one replacement: if the lease has
        already moved past ``lost_id``, the current sandbox is returned.
        """
        task = self._provisioning
        if task is not None and not task.done():
            return await asyncio.shield(task)  # a replacement is already on its way
        if lost_id is not None and self.info is not None and self.info.sandbox_id != lost_id:
            return self.info
        lost = self.info.sandbox_id if self.info is not None else ""
        if self.on_change is not None:
            self.on_change("lost", {"sandbox_id": lost, "reason": reason, "generation": self.generation})
        self._provisioning = asyncio.ensure_future(self._provision())
        info = await asyncio.shield(self._provisioning)
        if self.on_change is not None:
            self.on_change("reprovisioned", {"sandbox_id": info.sandbox_id, "replaces": lost, "generation": self.generation})
        return info

    async def release(self) -> None:
        """Destroy the sandbox if one was made; never raises."""
        task, self._provisioning = self._provisioning, None
        if task is None:
            return
        try:
            info = await task
            await self.client.destroy(info.sandbox_id)
        except BaseException:  # the host may be gone already; nothing to release then
            pass
