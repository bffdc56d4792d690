"""The interface every sandbox provider implements.

A provider owns the lifecycle of sandboxes and runs commands in them. The
workspace of every sandbox is a directory on the host (bind-mounted into a
container by the docker provider), so file operations are shared code in
``remote_sandbox.workspace`` and never go through the provider.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from protos.tether.sandbox.v1 import sandbox_pb2 as pb

SPILL_MOUNT = "/tmp/tether-spill"
"""Where a sandboxed command sees its sandbox's spill area (docker, and local under bubblewrap)."""


class ProviderError(Exception):
    """Base of the errors a provider raises; the server maps each to one status code."""


class SandboxNotFound(ProviderError):
    """No such sandbox: never made, destroyed, or its container vanished (NOT_FOUND)."""


class SandboxNotRunning(ProviderError):
    """The sandbox exists but is not running, or its setup failed (FAILED_PRECONDITION)."""


class InvalidRequest(ProviderError):
    """The request itself is wrong: bad recipe, path outside the workspace (INVALID_ARGUMENT)."""


class LimitExceeded(ProviderError):
    """A configured limit was hit; the message names it (RESOURCE_EXHAUSTED)."""


def setup_failure(command: str, how: str, output: str) -> str:
    """The message of a recipe setup command that failed: what ran, how it ended, and its output if it had any."""
    output = output.strip("\n")
    return (
        f"setup command {command!r} {how}:\n{output}"
        if output.strip()
        else f"setup command {command!r} {how} (no output)"
    )


class PermissionDenied(ProviderError):
    """The host is not configured to allow this (a direct workspace outside its allowed roots) (PERMISSION_DENIED)."""


@dataclass
class ExecSpec:
    """One command to run, as the server hands it to a provider."""

    argv: list[str] | None
    """Program and arguments, or None when ``shell`` is set."""
    shell: str | None
    """A string for ``/bin/sh -c``, or None when ``argv`` is set."""
    cwd: str
    """Working directory as the sandbox sees it (already resolved inside the workspace)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment on top of the recipe's."""
    stdin: bytes = b""
    """Bytes fed to the command's standard input, then EOF."""
    timeout_s: float = 120.0
    """Wall-clock limit; past it the whole process group is killed."""
    output_cap: int = 1 << 20
    """Bytes of output streamed before the rest goes only to the spill file."""
    report_cwd: bool = False
    """Report the shell's final working directory in ``Exited.cwd``."""
    batch_events: bool = False
    """The consumer reads ``ExecEvent.following``: a young command's first events may come in one event."""


@dataclass
class SandboxRecord:
    """What the host remembers about one sandbox."""

    sandbox_id: str
    tenant: str
    recipe: pb.Recipe
    workspace: Path
    """The workspace directory on the host."""
    workdir: str
    """The workspace path as commands in the sandbox see it."""
    isolation: str
    os: str = ""
    created_unix_ms: int = 0
    last_used_unix_ms: int = 0
    warnings: list[str] = field(default_factory=list)
    handle: object = None
    """Provider-private state (a container, a bwrap command line...)."""
    spill_mount: str = SPILL_MOUNT
    """The spill area (the host's ``<state_root>/spill``) as commands in the sandbox see it."""
    state: Path | None = None
    """The sandbox's own host directory (spill, tmp, control files); None = the workspace's parent."""
    workspace_dir: str = ""
    """The user's directory when this is a direct workspace (never removed by the host); "" otherwise."""

    @property
    def state_root(self) -> Path:
        """The sandbox's own host directory, removed on destroy; never the user's directory."""
        return self.state if self.state is not None else self.workspace.parent


class Provider(abc.ABC):
    """Creates, runs commands in, and destroys sandboxes of one kind."""

    name: str
    """``docker`` or ``local``."""

    @abc.abstractmethod
    async def provision(self, record: SandboxRecord) -> None:
        """Start the sandbox for ``record`` (workspace dir already created) and run setup.

        Fills in ``record.isolation``, ``record.os``, ``record.warnings``,
        ``record.handle``. Raises ``SandboxNotRunning`` with the setup output if a
        setup command fails, after cleaning up everything it started.
        """

    @abc.abstractmethod
    async def destroy(self, record: SandboxRecord) -> None:
        """Stop the sandbox and everything running in it. Idempotent."""

    @abc.abstractmethod
    async def is_running(self, record: SandboxRecord) -> bool:
        """Whether the sandbox can still run commands."""

    @abc.abstractmethod
    def exec(self, record: SandboxRecord, spec: ExecSpec) -> AsyncIterator[pb.ExecEvent]:
        """Run ``spec`` and yield Started, Output..., Exited.

        The command runs in its own process group. When the consumer stops
        iterating (``aclose``, task cancelled: the client cancelled the RPC) or
        the timeout passes, the whole group is killed before this returns.
        Output past ``spec.output_cap`` is not yielded but written, with all the
        rest, to a spill file inside the workspace's spill area; ``Exited``
        reports ``truncated`` and ``spill_path``.
        """

    async def adopt(self, host_id: str, state_dir: Path) -> list[SandboxRecord]:
        """The sandboxes an earlier run of host ``host_id`` left running that can be used again (none by default)."""
        return []

    async def reconcile(self, host_id: str, keep: frozenset[str] = frozenset()) -> list[str]:
        """Remove what an earlier run of host ``host_id`` left behind, except ``keep``; return the ids removed."""
        return []

    async def close(self) -> None:  # noqa: B027 - a provider with nothing to release need not say so
        """Release provider-wide resources (clients, pools). Sandboxes are left as they are."""
