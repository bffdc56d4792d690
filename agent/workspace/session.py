"""One session's workspace, wired into its lease: chosen once, kept in the log, restored into every sandbox."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from agent import events as ev
from agent.lease import SandboxLease
from agent.workspace.checkpoints import Checkpointer, WorkspaceRules
from agent.workspace.selection import Selection, select_project_files
from agent.workspace.settings import WorkspaceSettings
from agent.workspace.upload import upload_project
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from session.checkpoints import diff_states, record_checkpoint
from session.log import SessionLog
from session.plaintext import counted

Emit = Callable[[ev.AgentEvent], Awaitable[None]]

WORKSPACE_EVENT = "workspace"
"""The log event that fixes a session's workspace: mode, project, rules."""

LEFT_OUT_SHOWN = 10
"""Paths named in the left-out notice; the rest are counted."""


class WorkspaceError(Exception):
    """The workspace cannot be set up as asked; the message says what to do instead."""


def unsafe_direct_reason(project_dir: Path) -> str | None:
    """Why ``project_dir`` must not be mounted read-write into a sandbox, or None if it may.

    A directory that holds the user's home, the session store or the user's
    configuration would put credentials and every session within the agent's reach.
    """
    project = project_dir.resolve()
    home = Path.home().resolve()
    guarded = {
        "your home directory": home,
        "tether's session store": Path(os.environ.get("TETHER_HOME") or platformdirs.user_data_dir("tether")).resolve(),
        "your configuration": Path(platformdirs.user_config_dir()).resolve(),
    }
    if project == Path("/"):
        return "it is the root of the file system"
    for what, path in guarded.items():
        if project == path or project in path.parents:
            return f"it holds {what} ({path})"
    return None


@dataclass
class SessionWorkspace:
    """The workspace of one session: its mode and rules from the log, and what each new sandbox needs."""

    log: SessionLog
    project_dir: Path
    mode: str
    """``direct`` or ``copy``."""
    rules: WorkspaceRules
    settings: WorkspaceSettings
    checkpointer: Checkpointer
    emit: Emit
    fresh: bool
    """True until the workspace has been set up once (uploaded, or its baseline taken)."""
    baseline: asyncio.Task | None = field(default=None, repr=False)
    """Direct mode: the baseline (or resume) checkpoint being taken in the background."""
    restores: int = 0
    """Sandboxes the workspace was prepared in so far."""
    lease: SandboxLease | None = field(default=None, repr=False)
    """The lease it is attached to."""

    @classmethod
    def choose(
        cls, recorded: dict | None, project_dir: Path, *, requested_mode: str, remote: bool, settings: WorkspaceSettings
    ) -> tuple[str, WorkspaceRules]:
        """The mode and rules of a session: as its log recorded them, or chosen now; WorkspaceError if impossible."""
        if recorded is not None:
            mode = recorded.get("mode", "copy")
            if requested_mode and requested_mode != mode:
                raise WorkspaceError(
                    f"tether: this session's workspace is {mode!r}; it cannot be resumed as {requested_mode!r} "
                    "(start a new session for that)"
                )
            rules = WorkspaceRules.from_dict(recorded.get("rules", {}))
        else:
            mode = requested_mode or settings.mode or ("copy" if remote else "direct")
            git = (project_dir / ".git").exists()
            rules = WorkspaceRules.for_session(mode, git, settings.exclude, settings.max_file_bytes)
        if mode == "direct" and remote:
            raise WorkspaceError(
                "tether: --workspace direct needs the embedded sandbox host: a remote host never mounts "
                "a path a client names. Use --workspace copy (the default with --sandbox)."
            )
        if mode == "direct" and (reason := unsafe_direct_reason(project_dir)) is not None:
            raise WorkspaceError(
                f"tether: will not mount {project_dir} into the sandbox as the workspace: {reason}. "
                "Start tether in a project directory, or use --workspace copy."
            )
        return mode, rules

    @classmethod
    def open(
        cls,
        log: SessionLog,
        project_dir: Path,
        mode: str,
        rules: WorkspaceRules,
        settings: WorkspaceSettings,
        emit: Emit,
    ) -> SessionWorkspace:
        """The workspace of ``log``'s session, recording its mode and rules if the log has none yet."""
        recorded = workspace_of(log)
        keeper = Checkpointer(None, log, mode, rules, emit)
        keeper.load()
        workspace = cls(log, project_dir, mode, rules, settings, keeper, emit, fresh=recorded is None or keeper.seq < 0)
        if recorded is None:
            log.append(
                WORKSPACE_EVENT,
                {
                    "mode": mode,
                    "project_dir": str(project_dir),
                    "git": (project_dir / ".git").exists(),
                    "rules": rules.to_dict(),
                },
            )
        return workspace

    def attach(self, lease: SandboxLease) -> None:
        """Make every sandbox of ``lease`` start with this workspace."""
        self.lease = lease
        self.checkpointer.client = lease.client
        lease.cwd = self.checkpointer.cwd
        if self.mode == "direct":
            lease.workspace_dir = str(self.project_dir)
        lease.prepare = self._prepare
        lease.on_replace = self.checkpointer.prefetch

    async def _prepare(self, info: pb.SandboxInfo) -> None:
        """Set up a new sandbox's workspace before any tool may use it."""
        if self.mode == "direct":
            if self.restores == 0:
                # A new session's baseline, or a resumed one's catch-up with what the user changed
                # meanwhile; taken in the background, and waited for before a tool changes files.
                label = "baseline" if self.checkpointer.seq < 0 else "resume"
                self.baseline = asyncio.ensure_future(self.checkpointer.take(info.sandbox_id, label=label))
            else:
                await self.emit(
                    ev.Status(
                        f"Sandbox lost ({self._loss()}) — a new one mounts the project directory; nothing to restore."
                    )
                )
            self.fresh = False
            self.restores += 1
            return
        if self.fresh:
            await self._upload(info.sandbox_id)
            self.fresh = False
            self.restores += 1
            return
        summary = await self.checkpointer.restore(info.sandbox_id)
        if self.restores:
            await self.emit(
                ev.Status(
                    f"Sandbox lost ({self._loss()}) — restored checkpoint {summary.seq} "
                    f"({counted(summary.files, 'file')}) in {summary.seconds:.1f} s."
                )
            )
        elif summary.files:
            await self.emit(
                ev.Status(
                    f"Workspace restored from checkpoint {summary.seq} ({counted(summary.files, 'file')}) "
                    f"in {summary.seconds:.1f} s."
                )
            )
        self.restores += 1

    def _loss(self) -> str:
        reason = self.lease.last_loss if self.lease is not None else ""
        return reason[:120] or "it went away"

    async def wait_baseline(self) -> None:
        """Wait until the direct workspace's baseline is recorded (a file-changing tool must not run before)."""
        if self.baseline is not None:
            await asyncio.shield(self.baseline)

    async def _upload(self, sandbox_id: str) -> None:
        """Copy mode, new session: carry the project into the sandbox and record the baseline."""
        started = time.perf_counter()
        settings = self.settings
        selection = await asyncio.to_thread(
            select_project_files,
            self.project_dir,
            exclude=settings.exclude,
            max_file_bytes=settings.max_file_bytes,
            max_total_bytes=settings.max_total_bytes,
        )
        client = self.checkpointer.client
        assert client is not None, "attach the workspace to a lease first"
        with self.log.blobs.batch() as batch:
            result = await upload_project(client, sandbox_id, self.project_dir, selection, batch)
        keeper = self.checkpointer
        changes = diff_states({}, result.state)
        record_checkpoint(
            self.log,
            changes,
            seq=0,
            after_tool_use_id=None,
            label="baseline",
            files=result.files,
            bytes=result.bytes,
            extra={"left_out": [[path, reason] for path, reason in selection.left_out[:1000]]},
        )
        keeper.state, keeper.seq, keeper.last_tool = result.state, 0, ""
        keeper.forget_host_state()
        await self.emit(
            ev.Status(
                f"Uploaded {counted(result.files, 'file')} ({result.bytes / 1e6:.1f} MB) of {self.project_dir} "
                f"into the sandbox in {time.perf_counter() - started:.1f} s."
            )
        )
        notice = left_out_notice(selection, result.vanished)
        if notice:
            await self.emit(ev.Status(notice))


def left_out_notice(selection: Selection, vanished: list[str]) -> str:
    """One line naming what the upload left out, or "" if nothing worth saying."""
    items = [f"{path} ({reason})" for path, reason in selection.left_out] + [f"{path} (vanished)" for path in vanished]
    if not items:
        return ""
    shown = ", ".join(items[:LEFT_OUT_SHOWN])
    more = f" and {len(items) - LEFT_OUT_SHOWN} more" if len(items) > LEFT_OUT_SHOWN else ""
    return f"Not uploaded: {shown}{more}."


def workspace_of(log: SessionLog) -> dict | None:
    """The payload of the session's workspace event (mode, project_dir, rules), or None if it has none yet."""
    for event in log.events():
        if event.type == WORKSPACE_EVENT:
            return event.payload
    return None
