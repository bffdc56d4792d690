"""Run a sandbox's recipe setup commands (and other whole-output commands) through its provider's exec."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.execution.request import SETUP_TIMEOUT_S
from remote_sandbox.providers.base import ExecSpec, SandboxNotRunning, SandboxRecord, setup_failure

Exec = Callable[[SandboxRecord, ExecSpec], AsyncIterator[pb.ExecEvent]]
"""A provider's ``exec``."""


@dataclass
class CapturedRun:
    """A command's whole output and how it ended, for callers that do not stream."""

    stdout: bytes = b""
    """Everything written to standard output."""
    stderr: bytes = b""
    """Everything written to standard error."""
    exited: pb.Exited | None = None
    """How it ended; None if the stream ended without saying."""

    @property
    def exit_code(self) -> int:
        """The exit code, or -1 when killed by a signal or never known."""
        return self.exited.exit_code if self.exited is not None else -1

    @property
    def how(self) -> str:
        """How it ended, in words: ``exited with code 3``, ``was killed by signal 9``..."""
        exited = self.exited
        if exited is None:
            return "ended without an exit status"
        if exited.timed_out:
            return f"timed out after {SETUP_TIMEOUT_S:.0f} s"
        if exited.signal:
            return f"was killed by signal {exited.signal}"
        return f"exited with code {exited.exit_code}"


async def run_captured(
    exec_: Exec, record: SandboxRecord, shell: str, timeout_s: float = SETUP_TIMEOUT_S
) -> CapturedRun:
    """Run a shell command in the workdir and collect its whole output."""
    spec = ExecSpec(argv=None, shell=shell, cwd=record.workdir, timeout_s=timeout_s, output_cap=1 << 30)
    stdout, stderr = bytearray(), bytearray()
    result = CapturedRun()
    async for event in exec_(record, spec):
        if event.HasField("output"):
            (stdout if event.output.stream == pb.Output.STDOUT else stderr).extend(event.output.data)
        elif event.HasField("exited"):
            result.exited = event.exited
    result.stdout, result.stderr = bytes(stdout), bytes(stderr)
    return result


async def run_setup(exec_: Exec, record: SandboxRecord) -> None:
    """Run the recipe's setup commands in order; SandboxNotRunning with the output of the first that fails.

    The caller destroys the sandbox when this raises.
    """
    for command in record.recipe.setup:
        result = await run_captured(exec_, record, command)
        exited = result.exited
        if exited is None or exited.exit_code != 0 or exited.timed_out:
            output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise SandboxNotRunning(setup_failure(command, result.how, output))
