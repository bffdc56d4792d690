"""The harness: one session's model, sandbox, log and loop, wired together for any driver.

Start-up work overlaps: the ``anthropic`` import runs on a thread while the
embedded sandbox host starts and the sandbox is provisioned.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from agent import events as ev
from agent.embedded_host import EmbeddedHost
from agent.hosts import HostListError, HostSpec, load_host_settings, parse_host_list
from agent.lease import RUN_LABEL, SandboxLease
from agent.loop import AgentLoop, Emit
from agent.model import ModelClient, preload_sdk
from agent.options import EMBEDDED, HarnessError, HarnessOptions
from agent.permissions import (
    PermissionGate,
    PermissionSettings,
    SettingsError,
    project_settings_path,
    user_settings_path,
)
from agent.sandbox_client import NoHostAnswers, SandboxClient, SandboxError
from agent.sandbox_watch import SandboxWatch
from agent.workspace.changes import (
    ApplyReport,
    RewindPlan,
    WorkspaceChangeError,
    apply_to_project,
    base_state,
    current_state,
    plan_rewind,
    record_rewind,
    unified_diff,
    write_local,
)
from agent.workspace.session import SessionWorkspace, WorkspaceError, workspace_of
from agent.workspace.settings import MODES, WorkspaceSettings
from protos.recipes import load_recipe, recipe_to_dict
from session.store import (
    EventType,
    SessionLog,
    SessionStore,
    SessionStoreError,
)

START_PROBE_S = 10.0
"""How long a lone sandbox host may take to answer at start."""

LIST_PROBE_S = 5.0
"""How long each host of a list may take to answer at start before the next is tried."""


def last_sandbox(log: SessionLog) -> tuple[str, str, int] | None:
    """The host, id and generation of the session's newest sandbox, from its log; None if it has none."""
    found = None
    for event in log.events():
        payload = event.payload
        if event.type == EventType.SANDBOX and payload.get("event") in ("provisioned", "reprovisioned"):
            found = (
                str(payload.get("host", "")),
                str(payload.get("sandbox_id", "")),
                int(payload.get("generation", 1)),
            )
    return found


class Harness:
    """One session, ready to take prompts."""

    def __init__(self, options: HarnessOptions, emit: Emit) -> None:
        self.options = options
        self.emit = emit
        self.embedded: EmbeddedHost | None = None
        self.client: SandboxClient | None = None
        self.lease: SandboxLease | None = None
        self.log: SessionLog | None = None
        self.loop: AgentLoop | None = None
        self.model = ModelClient(model=options.model_name)
        self.started_at = time.monotonic()
        self.workspace: SessionWorkspace | None = None
        """The session's workspace (mode, checkpoints), once started."""
        self.gate: PermissionGate | None = None
        """Who may run what, once started (its mode changes with Shift+Tab and approved plans)."""
        self.watch: SandboxWatch | None = None
        """The heartbeat on the sandbox host, once started."""
        self._state_events: set[asyncio.Task] = set()
        self._shared_host = False
        self._workspace_roots: list[Path] = []
        self._new_log: SessionLog | None = None
        """The session log this harness created (not resumed), until it is kept or discarded."""
        self.resumed_log: SessionLog | None = None
        """The session being resumed, as soon as it is open: its conversation can be shown while the sandbox starts."""
        self.session_opened = asyncio.Event()
        """Set once the session to resume is open (or known to be a new one), before the sandbox host is reached."""

    @property
    def session_id(self) -> str:
        """The session's id (after start)."""
        assert self.log is not None
        return self.log.session_id

    @property
    def host_label(self) -> str:
        """Where the sandbox runs now, for the status bar and notices."""
        if self.lease is not None:
            return self.lease.host
        return self.options.first_host

    def _hosts(self) -> list[HostSpec]:
        """The hosts this session may use, in order: ``--sandbox``, else the user's settings, else embedded."""
        opts = self.options
        token = opts.sandbox_token or os.environ.get("TETHER_SANDBOX_TOKEN", "")
        try:
            if opts.sandbox:
                return parse_host_list(opts.sandbox, token=token, ca_file=opts.sandbox_ca_file)
            configured = load_host_settings([user_settings_path()])
        except (HostListError, SettingsError) as exc:
            raise HarnessError(f"tether: {exc}") from None
        if token:
            # A token from the command line or the environment serves hosts the settings give none for.
            configured = [
                HostSpec(spec.url, token=token, ca_file=spec.ca_file)
                if not spec.embedded and not spec.token and not spec.token_file
                else spec
                for spec in configured
            ]
        return configured or [HostSpec(EMBEDDED)]

    async def _connect(self, spec: HostSpec, timeout: float) -> SandboxClient:
        """A client of ``spec``'s host once it answers (within ``timeout`` s); SandboxError if it does not."""
        if spec.embedded:
            return await self._embedded_client(self._workspace_roots)
        client = SandboxClient(spec.url, spec.read_token() or None, ca_file=spec.ca_file or None)
        try:
            await client.wait_ready(timeout=timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def _first_host(self, hosts: list[HostSpec]) -> tuple[HostSpec, SandboxClient]:
        """The first of ``hosts`` that answers, and its client; a lone host's own error if it does not."""
        if len(hosts) == 1:
            return hosts[0], await self._connect(hosts[0], START_PROBE_S)
        failures = []
        for spec in hosts:
            try:
                client = await self._connect(spec, LIST_PROBE_S)
            except SandboxError as exc:
                failures.append(f"{spec.label}: {exc}")
                continue
            for failure in failures:
                await self.emit(ev.Status(f"Sandbox host not used: {failure}"))
            return spec, client
        raise NoHostAnswers("no sandbox host answers: " + "; ".join(failures))

    async def start(self) -> None:
        """Open the session, reach the sandbox host and begin provisioning.

        If start-up fails, a session it created is removed again: it holds no message.
        """
        try:
            await self._start()
        except BaseException:
            if self._new_log is not None:
                # No prompt reached it; close() removes the file once nothing writes to it any more.
                self.log = None
            raise

    async def _start(self) -> None:
        if self.options.preload_sdk:
            preload_sdk()
        opts = self.options
        store = SessionStore()
        try:
            recipe = load_recipe(opts.recipe or None)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"tether: bad recipe {opts.recipe!r}: {exc}") from exc
        try:
            settings = PermissionSettings.load(
                [user_settings_path(), project_settings_path(opts.project_dir)],
                allow=opts.allowed_tools,
                deny=opts.disallowed_tools,
            )
            gate = PermissionGate(opts.permission_mode, settings, opts.project_dir, self._workdir)
            self.gate = gate
            workspace_settings = WorkspaceSettings.load([user_settings_path(), project_settings_path(opts.project_dir)])
        except SettingsError as exc:
            raise HarnessError(f"tether: {exc}") from exc
        if opts.workspace and opts.workspace not in MODES:
            raise HarnessError(f"tether: --workspace must be one of {', '.join(MODES)}, not {opts.workspace!r}")
        log = opts.open_resumed()
        opts.resumed_log = None  # taken: a later harness on these options opens what they name then
        self.resumed_log = log
        self.session_opened.set()
        # A resumed session works on the project it was started in, wherever tether runs now.
        recorded = workspace_of(log) if log is not None else None
        project_dir = Path(recorded["project_dir"]) if recorded and recorded.get("project_dir") else opts.project_dir
        try:
            mode, rules = SessionWorkspace.choose(
                recorded,
                project_dir,
                requested_mode=opts.workspace,
                remote=any(not spec.embedded for spec in self._hosts()),
                settings=workspace_settings,
            )
        except WorkspaceError as exc:
            raise HarnessError(str(exc)) from exc
        hosts = self._hosts()
        self._workspace_roots = [project_dir] if mode == "direct" else []
        last = last_sandbox(log) if log is not None else None
        home = [spec for spec in hosts if last is not None and spec.label == last[0]]
        # A resumed session looks first where its sandbox was: it may still run there.
        spec, self.client = await self._first_host([*home, *(spec for spec in hosts if spec not in home)])
        if log is None:
            try:
                log = store.create(opts.project_dir)
            except SessionStoreError as exc:
                raise HarnessError(f"tether: cannot start a session: {exc}") from None
            self._new_log = log
        self.log = log
        self.workspace = SessionWorkspace.open(self.log, project_dir, mode, rules, workspace_settings, self.emit)
        self.lease = SandboxLease(
            self.client, host=spec.label, recipe=recipe, hosts=hosts, spec=spec, connect=self._connect
        )
        self.workspace.attach(self.lease)
        if self._shared_host:
            # If this run is killed, the resident harness finds its sandbox by this label.
            self.lease.labels[RUN_LABEL] = str(os.getpid())
        self.lease.on_state = self._announce_state
        self.lease.on_notice = self._announce_notice
        self.lease.on_client = self._follow_client
        log = self.log

        def host_change(event: str, payload: dict) -> None:
            log.append(EventType.HOST, {"event": event, **payload})

        self.lease.on_host = host_change
        adopted = await self._adopt(log, mode) if self._new_log is None else False
        self.lease.start()
        info = await self.lease.ready()

        def record(event: str, payload: dict) -> None:
            assert self.lease is not None
            log.append("sandbox", {"event": event, "host": self.lease.host, "provider": info.provider, **payload})

        self.lease.on_change = record
        if not adopted:
            self.log.append(
                "sandbox",
                {
                    "event": "provisioned",
                    "host": self.host_label,
                    "sandbox_id": info.sandbox_id,
                    "provider": info.provider,
                    "isolation": info.isolation,
                    "recipe": recipe_to_dict(recipe),
                    "generation": self.lease.generation,
                },
            )
        for warning in info.warnings:
            await self.emit(ev.Status(warning))
        if opts.verbose:
            await self.emit(
                ev.Status(
                    f"workspace: {mode} ({project_dir}); sandbox {info.sandbox_id} on {self.host_label} ({info.isolation})"
                )
            )
        self.loop = AgentLoop(
            model=self.model,
            lease=self.lease,
            log=self.log,
            project_dir=project_dir,
            emit=self.emit,
            max_turns=opts.max_turns,
            gate=gate,
            workspace=self.workspace,
        )
        self.lease.keep_standbys()
        if opts.heartbeat_s > 0:
            self.watch = SandboxWatch(self.lease, self.emit, interval=opts.heartbeat_s)
            self.watch.start()

    async def _adopt(self, log: SessionLog, mode: str) -> bool:
        """A resumed session whose last sandbox still runs on the current host: use it as it is."""
        assert self.lease is not None and self.workspace is not None
        if mode == "direct":
            return False  # the embedded host went with the run that made it; its workspace is the project anyway
        last = last_sandbox(log)
        if last is None or last[0] != self.lease.host:
            return False
        host, sandbox_id, generation = last
        try:
            info = await self.lease.client.get(sandbox_id)
        except SandboxError:
            return False
        if info.state != info.RUNNING:
            return False
        self.lease.adopt(info, generation)
        self.workspace.fresh = False
        self.workspace.restores = 1
        log.append(
            EventType.HOST,
            {
                "event": "reconnected",
                "host": host,
                "sandbox_id": sandbox_id,
                "reason": "resumed: the sandbox of the earlier run was still running",
                "kept": True,
            },
        )
        await self.emit(ev.Status(f"Resumed with the session's sandbox {sandbox_id} on {host}, still running."))
        return True

    def _announce_notice(self, text: str) -> None:
        """Pass a notice of the lease to the driver."""
        task = asyncio.ensure_future(self.emit(ev.Status(text)))
        self._state_events.add(task)
        task.add_done_callback(self._state_events.discard)

    def _follow_client(self, client: SandboxClient) -> None:
        """The lease moved to another client (reconnected, failed over): everything else follows."""
        self.client = client
        if self.workspace is not None:
            self.workspace.checkpointer.client = client

    def _announce_state(self, state: ev.SandboxState) -> None:
        """Pass a state change of the lease to the driver (the lease's callback is not async)."""
        task = asyncio.ensure_future(self.emit(state))
        self._state_events.add(task)
        task.add_done_callback(self._state_events.discard)

    @property
    def permission_mode(self) -> str:
        """The current permission mode."""
        return self.gate.mode if self.gate is not None else self.options.permission_mode

    def cycle_permission_mode(self) -> str:
        """Shift+Tab: the next permission mode (default → acceptEdits → plan → default); returns it."""
        if self.gate is None:
            return self.options.permission_mode
        return self.gate.cycle_mode()

    def _workdir(self) -> str:
        """The workspace path as the sandbox sees it (for permission rules on paths)."""
        return self.lease.workdir if self.lease is not None else "/workspace"

    async def _embedded_client(self, workspace_roots: list[Path]) -> SandboxClient:
        """A client of the embedded host: the shared one we were lent if it answers, else our own.

        Our own host may mount only ``workspace_roots`` (the project, in direct mode).
        """
        shared = self.options.shared_host
        if shared is not None:
            client = SandboxClient(shared.target, shared.token or None)
            try:
                await client.wait_ready(timeout=5.0)
                self._shared_host = True
                return client
            except SandboxError:
                await client.close()  # the shared host died; start one of our own
        embedded = self.embedded
        if embedded is not None and embedded.process is not None and embedded.process.returncode is None:
            target, token = embedded.target, embedded.token  # still running: another client of it
        else:
            if embedded is not None:
                await embedded.stop(grace=0.0)
            self.embedded = EmbeddedHost(workspace_roots=workspace_roots)
            target, token = await self.embedded.start()
        client = SandboxClient(target, token)
        await client.wait_ready()
        return client

    async def run(self, prompt: str) -> ev.TurnFinished:
        """Answer one prompt."""
        assert self.loop is not None, "start() first"
        return await self.loop.run(prompt)

    async def checkpoint_now(self) -> None:
        """Record the workspace as it is now (before a diff or rewind reads the newest checkpoint)."""
        assert self.workspace is not None and self.lease is not None
        await self.workspace.wait_baseline()
        info = await self.lease.ready()
        await self.workspace.checkpointer.take(info.sandbox_id, label="tool")

    async def diff(self) -> str:
        """The session's changes to the project as a unified diff (empty: none)."""
        assert self.log is not None
        await self.checkpoint_now()
        base, _ = base_state(self.log)
        return unified_diff(self.log, base, current_state(self.log))

    async def apply(self, *, force: bool = False) -> ApplyReport:
        """Write a copy workspace's changes into the local project."""
        assert self.log is not None and self.workspace is not None
        if self.workspace.mode == "direct":
            raise WorkspaceChangeError("nothing to apply: the workspace is the project directory itself")
        await self.checkpoint_now()
        return apply_to_project(self.log, self.workspace.project_dir, force=force)

    async def plan_rewind(self, number: int, choice: str) -> RewindPlan:
        """What rewinding to before prompt ``number`` would change (the workspace is checkpointed first)."""
        assert self.log is not None
        await self.checkpoint_now()
        return plan_rewind(self.log, number, choice)

    async def rewind(self, plan: RewindPlan) -> ApplyReport:
        """Carry out ``plan``: the files (in the project or the sandbox), then the branch in the log."""
        assert self.log is not None and self.workspace is not None and self.lease is not None and self.loop is not None
        report = ApplyReport()
        if plan.changes.set or plan.changes.removed:
            if self.workspace.mode == "direct":
                write_local(self.workspace.project_dir, self.log, plan.changes, expected=None, report=report)
            else:
                info = await self.lease.ready()
                await self.workspace.checkpointer.write(info.sandbox_id, plan.changes)
        record_rewind(self.log, plan)
        self.workspace.checkpointer.load()
        self.loop.reload()
        return report

    def interrupt(self) -> bool:
        """Stop the running turn (model stream and tool); False if nothing was running."""
        return self.loop.interrupt() if self.loop is not None else False

    def _discard_unused_log(self) -> None:
        """Remove the session this harness created if no prompt ever reached it: an empty session helps nobody."""
        log, self._new_log = self._new_log, None
        if log is None or any(event.type == EventType.USER for event in log.events()):
            return
        self.log = None
        log.close()
        try:
            log.path.unlink(missing_ok=True)  # the index drops a vanished log on its next look
        except OSError:
            pass  # an empty session left behind is untidy, not an error worth failing close() for

    async def close(self) -> None:
        """Release the sandbox, the host and the connections; never raises."""
        if self.watch is not None:
            await self.watch.stop()
        if self.lease is not None:
            await self.lease.release()
        if self.client is not None:
            await self.client.close()
        if self.embedded is not None:
            await self.embedded.stop()
        await self.model.close()
        self._discard_unused_log()
