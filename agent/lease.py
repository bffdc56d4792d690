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
from typing import TYPE_CHECKING, Any

from agent import events as ev
from agent.sandbox_client import (
    ExecResult,
    HostUnreachable,
    NoHostAnswers,
    SandboxClient,
    SandboxError,
    SandboxGone,
    SandboxNotRunning,
)
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

if TYPE_CHECKING:
    from agent.hosts import HostSpec  # agent.hosts reads settings through agent.permissions, which imports tools

RUN_LABEL = "tether.run"
"""Label on a sandbox provisioned on a shared host: the pid of the run that holds it, so a cleaner can
destroy it if that run is killed before it can release it."""

HOST_PROBE_S = 3.0
"""How long a host may take to answer when the session looks for one to move to."""

RECOVERY_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
"""Pauses between two rounds over every host while none answers (the last one repeats)."""

Connect = Callable[["HostSpec", float], Awaitable[SandboxClient]]
"""Opens a client of a host and waits (at most the given seconds) until it answers; SandboxError if it does not."""


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
    hosts: list[HostSpec] = field(default_factory=list)
    """Every host the session may use, in order (the current one among them); [] = only ``client``."""
    spec: HostSpec | None = None
    """The current host's entry in ``hosts``."""
    connect: Connect | None = None
    """Opens a client of another host (or of the current one again), for reconnecting and failing over."""
    on_client: Callable[[SandboxClient], None] | None = None
    """Told when the lease moves to another client (the workspace's checkpointer follows it)."""
    on_host: Callable[[str, dict[str, Any]], None] | None = None
    """Told of every host change (``failed over``, ``reconnected``) so the session log can keep it."""
    on_notice: Callable[[str], None] | None = None
    """Shows the user a line in passing (a host lost, a failover, a retry)."""
    standby: dict[str, SandboxClient] = field(default_factory=dict)
    """Open clients of the other remote hosts, by label, so a failover does not wait for a connection."""
    recoveries: int = 0
    """Rounds over the hosts since the last one that found a host (0 = the host answers)."""
    _provisioning: asyncio.Task | None = field(default=None, repr=False)
    _retry: asyncio.TimerHandle | None = field(default=None, repr=False)

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
        host does not fail every later call; when the host itself was lost, every
        host is tried again. If the connection to the host broke since the last
        call, the sandbox is looked at first: kept if it survived, replaced (and
        restored) if it did not, and the session moves to another host if this one
        does not answer.
        """
        task = self._provisioning
        if task is not None and task.done() and (task.cancelled() or task.exception() is not None):
            self._provisioning = None
            if self.recoveries and self._can_move:
                return await self.recover(self.last_loss or "no sandbox host answered")
        self.start()
        assert self._provisioning is not None
        info = await asyncio.shield(self._provisioning)
        if self._can_move and not self.client.connected() and self.info is not None:
            info = await self._verify(info)
        return info

    @property
    def _can_move(self) -> bool:
        return self.connect is not None and bool(self.hosts)

    async def _verify(self, info: pb.SandboxInfo) -> pb.SandboxInfo:
        """The connection to the host broke since the last call: find out what is left before a tool runs."""
        try:
            seen = await self.client.get(info.sandbox_id)
        except (SandboxGone, SandboxNotRunning) as exc:
            self._host_event("reconnected", self.host, "the connection broke; the sandbox was gone", info.sandbox_id)
            return await self.replace(
                f"the sandbox is gone after the connection to its host broke ({exc})", info.sandbox_id
            )
        except HostUnreachable as exc:
            return await self.recover(str(exc), silent=exc.silent, lost=self.client)
        if seen.state != pb.SandboxInfo.RUNNING:
            return await self.replace("the sandbox stopped after the connection to its host broke", info.sandbox_id)
        self._host_event("reconnected", self.host, "the connection broke; the sandbox survived", info.sandbox_id)
        return info

    def _notice(self, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(text)

    def _host_event(self, event: str, host: str, reason: str, sandbox_id: str, **more: Any) -> None:
        if self.on_host is not None:
            self.on_host(event, {"host": host, "reason": reason, "sandbox_id": sandbox_id, **more})

    def _use(self, spec: HostSpec, client: SandboxClient) -> None:
        """Make ``client`` (of ``spec``) the lease's client."""
        self.spec, self.client, self.host = spec, client, spec.label
        if self.on_client is not None:
            self.on_client(client)

    async def recover(self, reason: str, *, silent: bool = False, lost: SandboxClient | None = None) -> pb.SandboxInfo:
        """The host was lost: reconnect to it, or move to the next host that answers, with the workspace restored.

        ``silent``: the host went quiet (rather than refusing), so the others are
        tried before it. ``lost`` is the client the caller saw fail: if the lease has
        already moved past it, that is all. Callers that saw the same loss share one
        recovery. HostUnreachable if no host answers; rounds go on in the
        background, with growing pauses, until one does.
        """
        task = self._provisioning
        if task is not None and not task.done():
            return await asyncio.shield(task)
        if lost is not None and lost is not self.client and self.info is not None and self.state == "ready":
            return self.info
        if not self._can_move:
            raise HostUnreachable(reason)
        self._cancel_retry()
        self._provisioning = asyncio.ensure_future(self._recover(reason, silent))
        self._provisioning.add_done_callback(_observe)
        return await asyncio.shield(self._provisioning)

    async def _recover(self, reason: str, silent: bool) -> pb.SandboxInfo:
        old_spec, old_client = self.spec, self.client
        lost_id = self.info.sandbox_id if self.info is not None else ""
        self.last_loss = reason
        self.recoveries += 1
        self._set_state("unreachable", reason)
        if self.on_replace is not None:
            self.on_replace()  # the checkpoint is read while hosts are tried, not after
        others = [spec for spec in self.hosts if spec != old_spec]
        here = [old_spec] if old_spec is not None else []
        # A host that refused or reset may be restarting: look there first. A silent one last.
        order = [*others, *here] if silent else [*here, *others]
        if self.recoveries == 1:
            where = f"; trying {', '.join(spec.label for spec in order)}" if order else ""
            self._notice(f"Sandbox host at {self.host} lost ({reason[:160]}){where}…")
        failures: list[str] = []
        for spec in order:
            client = self.standby.pop(spec.label, None)
            if client is not None and not client.connected():
                await _close_quietly(client)  # keepalive found that host gone too
                client = None
            try:
                if client is None:
                    client = await self.connect(spec, HOST_PROBE_S)  # type: ignore[misc]
            except SandboxError as exc:
                failures.append(f"{spec.label}: {exc}")
                continue
            try:
                info = await self._move_to(spec, client, reason, lost_id, old_spec)
            except asyncio.CancelledError:
                raise
            except SandboxError as exc:
                failures.append(f"{spec.label}: {exc}")
                if client is not old_client:
                    await _close_quietly(client)
                if old_spec is not None:
                    self._use(old_spec, old_client)
                continue
            self.recoveries = 0
            if old_client is not client:
                asyncio.ensure_future(_close_quietly(old_client))
            self.keep_standbys()
            return info
        self._set_state("unreachable", reason)
        delay = RECOVERY_BACKOFF_S[min(self.recoveries, len(RECOVERY_BACKOFF_S)) - 1]
        self._notice(
            f"No sandbox host answers (attempt {self.recoveries}): {'; '.join(failures)[:400]}. "
            f"Trying again in {delay:g} s."
        )
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)
        raise NoHostAnswers("no sandbox host answers: " + "; ".join(failures))

    async def _move_to(
        self, spec: HostSpec, client: SandboxClient, reason: str, lost_id: str, old_spec: HostSpec | None
    ) -> pb.SandboxInfo:
        """Carry on with ``client``: the same sandbox if it survived on the same host, else a new one restored."""
        same = spec == old_spec
        if same and lost_id and self.info is not None:
            try:
                seen = await client.get(lost_id)
            except (SandboxGone, SandboxNotRunning):
                seen = None
            if seen is not None and seen.state == pb.SandboxInfo.RUNNING:
                self._use(spec, client)
                self._set_state("ready")
                self._host_event("reconnected", spec.label, reason, lost_id, kept=True)
                self._notice(f"Reconnected to the sandbox host at {spec.label}; the sandbox and its files survived.")
                return self.info
        self._use(spec, client)
        if self.on_replace is not None:
            self.on_replace()
        self._set_state("restoring")
        info = await self._provision_and_prepare()
        moved = "reconnected" if same else "failed over"
        self._host_event(
            moved, spec.label, reason, info.sandbox_id, replaces=lost_id, previous=old_spec.label if old_spec else ""
        )
        if self.on_change is not None:
            self.on_change(
                "reprovisioned", {"sandbox_id": info.sandbox_id, "replaces": lost_id, "generation": self.generation}
            )
        if not same:
            self._notice(f"Failed over to the sandbox host at {spec.label}.")
        self._set_state("ready")
        return info

    def keep_standbys(self) -> None:
        """Connect to the other remote hosts in the background and keep the connections open (keepalive
        watches them), so failing over to one starts with a provision, not a handshake."""
        connect = self.connect
        if connect is None:
            return

        async def warm(spec: HostSpec) -> None:
            try:
                client = await connect(spec, HOST_PROBE_S)
            except SandboxError:
                return  # not answering now: a failover connects afresh
            if spec.label in self.standby or spec == self.spec:
                await _close_quietly(client)
            else:
                self.standby[spec.label] = client

        for spec in self.hosts:
            if spec != self.spec and not spec.embedded and spec.label not in self.standby:
                asyncio.ensure_future(warm(spec)).add_done_callback(_observe)

    def _retry_now(self) -> None:
        """The background round after a pause: look for a host again while none answers."""
        self._retry = None
        task = self._provisioning
        if not self.recoveries or (task is not None and not task.done()):
            return  # a host was found meanwhile, or a round is under way
        self._provisioning = asyncio.ensure_future(self._recover(self.last_loss, False))
        self._provisioning.add_done_callback(_observe)

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def adopt(self, info: pb.SandboxInfo, generation: int) -> None:
        """Use ``info``, a sandbox of this session that outlived an earlier run, as it is (no provisioning)."""
        self.info = info
        self.generation = generation
        if not self.cwd:
            self.cwd = info.workdir
        done: asyncio.Future[pb.SandboxInfo] = asyncio.get_running_loop().create_future()
        done.set_result(info)
        self._provisioning = asyncio.ensure_future(_result_of(done))
        self._set_state("ready")

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
        self._cancel_retry()
        standby, self.standby = list(self.standby.values()), {}
        for client in standby:
            await _close_quietly(client)
        task, self._provisioning = self._provisioning, None
        if task is None:
            return
        if not task.done():
            # Closing while the sandbox is still being made (quit during start-up), or while hosts are
            # looked for (silent ones take seconds): stop waiting. The host's own clean-up (shutdown,
            # idle TTL) takes what a cancelled Provision made.
            task.cancel()
        try:
            info = await task
            await self.client.destroy(info.sandbox_id)
        except BaseException:  # the host may be gone already; nothing to release then
            pass


def _observe(task: asyncio.Task) -> None:
    """Mark a background task's failure as seen (its awaiters, if any, get it too)."""
    if not task.cancelled():
        task.exception()


async def _result_of(future: asyncio.Future[pb.SandboxInfo]) -> pb.SandboxInfo:
    return await future


async def _close_quietly(client: SandboxClient) -> None:
    with contextlib.suppress(Exception):
        await client.close()
