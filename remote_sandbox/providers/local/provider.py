"""The local provider's lifecycle: a directory per sandbox, its limits, and how its commands start."""

from __future__ import annotations

import asyncio
import functools
import logging
import platform
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.execution.loop import Cleanups, run_command
from remote_sandbox.execution.request import DRAIN_AFTER_EXIT_S, SPILL_MOUNT, validate
from remote_sandbox.execution.setup import run_setup
from remote_sandbox.providers.base import (
    ExecSpec,
    InvalidRequest,
    Provider,
    SandboxNotFound,
    SandboxRecord,
)
from remote_sandbox.providers.local import isolation
from remote_sandbox.providers.local.launcher import LAUNCHER_START_TIMEOUT_S, Launcher, LauncherError, launcher_source
from remote_sandbox.providers.local.limits import LimitPlan, SandboxCgroup, cgroup_name
from remote_sandbox.providers.local.processes import HostProcess, LauncherProcess, LocalCommand

log = logging.getLogger("remote_sandbox.local")


@dataclass(eq=False)
class LocalSandbox:
    """The provider's private state for one sandbox (``SandboxRecord.handle``)."""

    root: Path
    """The sandbox's host directory (workspace, spill, tmp)."""
    bwrap: bool
    """Whether its commands run under bubblewrap."""
    cgroup: SandboxCgroup | None = None
    """Its cgroup, when this host may make one."""
    running: set[LocalCommand] = field(default_factory=set)
    """Commands running now (killed on destroy)."""
    launcher: Launcher | None = None
    """The resident command launcher, when commands run through one."""
    launcher_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the launcher is (re)started."""
    destroyed: bool = False
    """Whether ``destroy`` ran."""

    @functools.cached_property
    def tmp(self) -> Path:
        """The host directory that is the sandbox's /tmp."""
        return self.root / "tmp"

    @functools.cached_property
    def spill(self) -> Path:
        """The host directory of the spill area."""
        return self.root / "spill"


class LocalProvider(Provider):
    """Sandboxes as host directories; commands under bubblewrap, or plain (and unsafe) without it."""

    name = "local"

    def __init__(
        self,
        *,
        use_bwrap: bool | None = None,
        resident: bool | None = None,
        allow_base: list[Path] | None = None,
        limits: LimitPlan | None = None,
    ) -> None:
        """Use bubblewrap if it works here (``use_bwrap`` None), always (True), or never (False).

        Under bubblewrap, ``resident`` chooses how commands start: through one
        resident launcher per sandbox (True; None = when a Python 3 is visible in
        the sandbox, else one bubblewrap per command) or one bubblewrap per
        command (False). ``allow_base`` lists the host directories a recipe's
        ``base`` may be copied from; a tenant must not be able to copy arbitrary
        host files into its sandbox. ``limits`` is how resource limits are
        enforced (found on this host when None).
        """
        self.allow_base = [Path(p).resolve() for p in (allow_base or [])]
        """Directories under which ``recipe.base`` may point."""
        bwrap = shutil.which("bwrap")
        reason = None
        if use_bwrap is False:
            reason = "disabled by configuration"
        elif bwrap is None:
            reason = "bwrap is not installed"
        else:
            reason = isolation.probe_bwrap(bwrap)
        if use_bwrap and reason is not None:
            raise RuntimeError(f"bubblewrap was required but is not usable: {reason}")
        self.bwrap = bwrap if reason is None else None
        """The bwrap executable, or None when commands run unisolated."""
        self.unsafe_reason = reason
        """Why there is no isolation, or None."""
        self.launcher_python = isolation.sandbox_python() if self.bwrap and resident is not False else None
        """The Python the sandboxes' command launchers run, or None: one bubblewrap per command."""
        if resident and self.bwrap and self.launcher_python is None:
            raise RuntimeError("a resident launcher was required but no Python 3 is visible in the sandbox")
        self.limits = limits if limits is not None else LimitPlan.detect()
        """How sandboxes' resource limits are enforced here."""
        self._cleanups = Cleanups()
        self._sandboxes: set[LocalSandbox] = set()
        self._launcher_proven = False
        self._static_args: list[str] = []
        if reason is not None:
            log.warning("WARNING: local sandbox provider: %s", isolation.UNSAFE_WARNING.format(reason=reason))
        else:
            self._static_args = isolation.system_binds() + isolation.etc_binds()
            if self.launcher_python is None:
                log.info(
                    "local sandbox provider: one bubblewrap per command (no Python 3 in the sandbox for a launcher)"
                )

    # ----- lifecycle

    async def provision(self, record: SandboxRecord) -> None:
        """Prepare the sandbox's directories and cgroup, copy the base, start its launcher, run the setup commands."""
        recipe = record.recipe
        sandbox = LocalSandbox(root=record.state_root, bwrap=self.bwrap is not None)
        (sandbox.tmp / "home").mkdir(parents=True, exist_ok=True)
        sandbox.spill.mkdir(exist_ok=True)
        if recipe.base and record.workspace_dir:
            # Copying a base would write into the user's own directory.
            raise InvalidRequest(
                "a recipe with a 'base' cannot be used with a direct workspace: the base would be copied into it"
            )
        if recipe.base:
            await self._copy_base(recipe.base, record.workspace)
        limits = self.limits.describe(recipe.limits)
        if sandbox.bwrap:
            record.workdir = record.workdir or recipe.workdir or "/workspace"
            record.spill_mount = SPILL_MOUNT
            network = "network on" if recipe.network else "no network"
            record.isolation = f"bubblewrap: namespaces, read-only system, {network}; {limits}"
        else:
            record.workdir = str(record.workspace)
            record.spill_mount = str(sandbox.spill)
            record.isolation = f"none: plain host processes (no security boundary); {limits}"
            record.warnings.append(isolation.UNSAFE_WARNING.format(reason=self.unsafe_reason))
        if recipe.image:
            record.warnings.append(
                f"the local provider ignores the recipe's image {recipe.image!r}: commands use this host's system"
            )
        record.os = f"{platform.system()} {platform.release()} {platform.machine()}"
        record.handle = sandbox
        self._sandboxes.add(sandbox)
        try:
            sandbox.cgroup = await asyncio.to_thread(self.limits.create, cgroup_name(record.sandbox_id), recipe.limits)
            if self.launcher_python is not None:
                await self._first_launcher(sandbox, record)
            await run_setup(self.exec, record)
        except BaseException:
            await self.destroy(record)
            raise

    async def _first_launcher(self, sandbox: LocalSandbox, record: SandboxRecord) -> None:
        """Start the sandbox's launcher; on a host where none ever worked, fall back to one bubblewrap per command."""
        try:
            await self._launcher(sandbox, record)
            self._launcher_proven = True
        except LauncherError as exc:
            if self._launcher_proven:
                raise
            # It never worked on this host (an old Python, say): one bubblewrap per command, as before.
            log.warning("local sandbox provider: no command launcher (%s); one bubblewrap per command", exc)
            self.launcher_python = None
            sandbox.launcher = None

    async def _copy_base(self, base: str, workspace: Path) -> None:
        """Copy the recipe's base directory into the new workspace (symlinks as symlinks)."""
        source = Path(base).expanduser()
        if not source.is_absolute():
            raise InvalidRequest(f"recipe base {base!r} must be an absolute path on the sandbox host")
        source = source.resolve()
        if not any(source == root or root in source.parents for root in self.allow_base):
            raise InvalidRequest(
                f"recipe base {base!r} is not allowed on this host "
                "(the host operator can allow directories with --allow-base DIR)"
            )
        if not source.is_dir():
            raise InvalidRequest(f"recipe base {base!r} is not a directory on the sandbox host")
        await asyncio.to_thread(shutil.copytree, source, workspace, symlinks=True, dirs_exist_ok=True)

    async def _launcher(self, sandbox: LocalSandbox, record: SandboxRecord) -> Launcher:
        """The sandbox's running launcher, started (again, if a command ended the last one) when needed."""
        launcher = sandbox.launcher
        if launcher is not None and launcher.alive and not sandbox.destroyed:
            return launcher  # the common case, without a lock
        async with sandbox.launcher_lock:
            if sandbox.destroyed:
                raise SandboxNotFound(f"sandbox {record.sandbox_id} is gone")
            if sandbox.launcher is not None and sandbox.launcher.alive:
                return sandbox.launcher
            if sandbox.launcher is not None:
                await sandbox.launcher.wait_stopped(DRAIN_AFTER_EXIT_S)
            assert self.launcher_python is not None
            inner = [self.launcher_python, "-I", "-S", "-c", launcher_source(), "tether-launcher"]
            argv = [*self._bwrap_args(sandbox, record), "--setenv", "PATH", isolation.SANDBOX_PATH, "--", *inner]
            limited = self.limits.wrapper(sandbox.cgroup, record.recipe.limits)
            launcher = Launcher([*limited, *argv], {"PATH": isolation.SANDBOX_PATH}, sandbox.root)
            sandbox.launcher = launcher
            await launcher.start(LAUNCHER_START_TIMEOUT_S)
            return launcher

    async def destroy(self, record: SandboxRecord) -> None:
        """Kill everything running in the sandbox and remove its cgroup; the server removes its directory. Idempotent."""
        sandbox = record.handle
        if not isinstance(sandbox, LocalSandbox):
            return
        sandbox.destroyed = True
        self._sandboxes.discard(sandbox)
        for process in list(sandbox.running):
            process.kill_group()
        if sandbox.launcher is not None:
            sandbox.launcher.stop()
            await sandbox.launcher.wait_stopped(DRAIN_AFTER_EXIT_S * 5)
        if sandbox.cgroup is not None:
            await asyncio.to_thread(_remove_cgroup, sandbox.cgroup)

    async def is_running(self, record: SandboxRecord) -> bool:
        """Whether the sandbox exists and was not destroyed."""
        sandbox = record.handle
        return isinstance(sandbox, LocalSandbox) and not sandbox.destroyed and record.workspace.is_dir()

    # ----- commands

    def _bwrap_args(self, sandbox: LocalSandbox, record: SandboxRecord) -> list[str]:
        """bubblewrap's command line up to the command."""
        assert self.bwrap is not None
        return isolation.bwrap_args(self.bwrap, self._static_args, record, sandbox.tmp, sandbox.spill)

    def _command(self, sandbox: LocalSandbox, record: SandboxRecord, spec: ExecSpec, exec_id: str) -> LocalCommand:
        """The command that will run ``spec``: through the launcher, one bubblewrap, or plain."""
        report = spec.report_cwd and spec.shell is not None
        cwd_host = sandbox.spill / f"exec-{exec_id}.cwd" if report else None
        cwd_file = f"{record.spill_mount}/exec-{exec_id}.cwd" if report else None
        argv, env = isolation.command_line(record, spec, cwd_file, sandbox.bwrap, sandbox.tmp)
        if sandbox.bwrap and self.launcher_python is not None:
            direct = (spec.cwd, spec.argv) if spec.argv is not None else None
            launcher = functools.partial(self._launcher, sandbox, record)
            return LauncherProcess(launcher, argv, env, spec.stdin, sandbox.running, cwd_host, direct)
        # Started by the host: each command joins the sandbox's cgroup (or takes its rlimits) itself.
        limited = self.limits.wrapper(sandbox.cgroup, record.recipe.limits)
        if not sandbox.bwrap:
            return HostProcess([*limited, *argv], env, record.workspace, spec.stdin, sandbox.running, cwd_host)
        args = self._bwrap_args(sandbox, record)
        for name, value in env.items():
            args += ["--setenv", name, value]
        argv = [*limited, *args, "--", *argv]
        command = HostProcess(
            argv, {"PATH": isolation.SANDBOX_PATH}, sandbox.root, spec.stdin, sandbox.running, cwd_host
        )
        command.shell_status = True  # bubblewrap reports its command's death by signal N as 128+N
        return command

    def exec(self, record: SandboxRecord, spec: ExecSpec) -> AsyncIterator[pb.ExecEvent]:
        """Run ``spec`` in its own process group; yield Started, Output..., Exited."""
        sandbox = record.handle
        if not isinstance(sandbox, LocalSandbox) or sandbox.destroyed:
            raise SandboxNotFound(f"sandbox {record.sandbox_id} is gone")
        validate(spec)
        exec_id = secrets.token_hex(8)
        command = self._command(sandbox, record, spec, exec_id)
        spill_file = sandbox.spill / f"exec-{exec_id}.log"
        return run_command(command, spec, spill_file, record.spill_mount, self._cleanups)

    async def close(self) -> None:
        """Wait for the reaping of killed commands, then stop the launchers (sandbox files stay)."""
        await self._cleanups.wait()
        for sandbox in list(self._sandboxes):
            if sandbox.launcher is not None:
                sandbox.launcher.stop()
                await sandbox.launcher.wait_stopped(DRAIN_AFTER_EXIT_S * 5)


def _remove_cgroup(cgroup: SandboxCgroup) -> None:
    """Kill what is left in a destroyed sandbox's cgroup and remove it (blocking)."""
    for _ in range(50):
        cgroup.kill_all()
        if cgroup.remove():
            return
    log.warning("could not remove cgroup %s: processes are still in it", cgroup.dirs[0])
