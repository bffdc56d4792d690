"""Bash: run a shell command in the sandbox; the working directory persists between calls."""

from __future__ import annotations

import codecs
import re
import shlex
from typing import Any

from agent.sandbox_client import SandboxError
from agent.tools.base import Tool, ToolContext, ToolInputError, ToolResult, cap_for_model, require
from agent.tools.views import CallView, ResultView, one_line
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

DEFAULT_TIMEOUT_MS = 120_000
MAX_TIMEOUT_MS = 600_000

SHELL_CONTROL = re.compile(r"[;&|`\n<>]|\$\(")
"""What lets a second command ride along a first: a prefix rule never covers a command with it."""

_SUBCOMMAND = re.compile(r"^[a-z][a-z0-9_-]*$")
"""A word that reads as a subcommand (``test``, ``run``, ``status``), not an argument (``-x``, ``1``, ``src/``)."""

TAKES_SUBCOMMANDS = frozenset(
    "apt apt-get brew bun bundle cargo composer deno docker dotnet gh git go gradle helm just kubectl make mvn "
    "nix npm npx pip pip3 pnpm poetry rake systemctl terraform uv yarn".split()
)
"""Programs whose second word says what they do (``npm test``, ``git status``): a rule keeps it."""


def command_prefix(command: str) -> str | None:
    """The prefix a rule for ``command`` should allow: ``npm test`` for ``npm test -- --watch``,
    ``seq`` for ``seq 1 300000``; None when only the exact command should be allowed (shell control,
    unparsable quoting)."""
    if SHELL_CONTROL.search(command):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or "=" in words[0]:
        return None
    prefix = [words[0]]
    if len(words) > 1 and words[0] in TAKES_SUBCOMMANDS and _SUBCOMMAND.match(words[1]):
        prefix.append(words[1])
    return " ".join(prefix)


class BashTool(Tool):
    """Runs a command with /bin/sh in the sandbox's workspace."""

    name = "Bash"
    changes_files = True
    subject = "command"
    description = (
        "Executes a shell command in the sandbox and returns its output. The working "
        "directory persists between calls; environment changes do not. Output past "
        "30,000 characters is cut for you, with the full output kept. Use `timeout` "
        f"(milliseconds, default {DEFAULT_TIMEOUT_MS:,}, at most {MAX_TIMEOUT_MS:,}) for long commands."
    )
    input_schema = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command to execute"},
            "timeout": {
                "type": "number",
                "description": f"Optional timeout in milliseconds (max {MAX_TIMEOUT_MS})",
            },
            "description": {
                "type": "string",
                "description": "Clear, concise description of what this command does in 5-10 words",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }

    def summary(self, args: dict[str, Any]) -> str:
        """``Bash  the command``."""
        return one_line(self.name, str(args.get("command", "")))

    def call_view(self, args: dict[str, Any]) -> CallView:
        """The command, with the model's description of it."""
        description = args.get("description")
        return CallView(
            "command",
            self.summary(args),
            text=str(args.get("command", "")),
            description=description if isinstance(description, str) else "",
        )

    def result_view(self, args: dict[str, Any], result: ToolResult) -> ResultView:
        """The output as the model saw it."""
        return ResultView("text", result.content)

    def suggested_rule(self, args: dict[str, Any], workdir: str) -> str:
        """A prefix rule (``Bash(npm test:*)``) where the command has one, else the exact command."""
        command = str(args.get("command", "")).strip()
        prefix = command_prefix(command)
        if prefix is None:
            return f"Bash({command})" if command else "Bash"
        return f"Bash({prefix}:*)"

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Run the command, streaming its output live, and report what the model needs."""
        command = require(args, "command", str)
        if not command.strip():
            raise ToolInputError("`command` is empty.")
        timeout = args.get("timeout")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT_MS
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 1:
            raise ToolInputError("`timeout` must be a number of milliseconds, at least 1.")
        if timeout > MAX_TIMEOUT_MS:
            raise ToolInputError(f"`timeout` may be at most {MAX_TIMEOUT_MS} ms.")

        lease = ctx.lease
        await lease.ready()
        note = ""
        stdout, stderr, exited = await _exec(ctx, command, lease.cwd, int(timeout))
        if _cwd_vanished(lease.cwd, lease.workdir, stdout, stderr, exited):
            # The shell's last directory was removed: the command never started. Without
            # this, every later call would fail the same way.
            note = f"(The working directory {lease.cwd} no longer exists; the command ran in {lease.workdir}.)"
            await ctx.output("stderr", note + "\n")
            lease.cwd = lease.workdir
            stdout, stderr, exited = await _exec(ctx, command, lease.cwd, int(timeout))
        if exited.cwd:
            lease.cwd = exited.cwd
        result = _result(stdout, stderr, exited, int(timeout))
        if note:
            result.content += "\n" + note
        return result


async def _exec(ctx: ToolContext, command: str, cwd: str, timeout_ms: int) -> tuple[bytes, bytes, pb.Exited]:
    """Run ``command`` in ``cwd``, streaming its output to the driver; (stdout, stderr, how it exited)."""
    lease = ctx.lease
    stdout, stderr = bytearray(), bytearray()
    decoders = {
        pb.Output.STDOUT: codecs.getincrementaldecoder("utf-8")("replace"),
        pb.Output.STDERR: codecs.getincrementaldecoder("utf-8")("replace"),
    }
    exited: pb.Exited | None = None
    stream = lease.exec_stream(shell=command, cwd=cwd, timeout_ms=timeout_ms, report_cwd=True)
    async for event in stream:
        which = event.WhichOneof("event")
        if which == "output":
            chunk = event.output
            (stdout if chunk.stream == pb.Output.STDOUT else stderr).extend(chunk.data)
            text = decoders[chunk.stream].decode(chunk.data)
            if text:
                await ctx.output("stdout" if chunk.stream == pb.Output.STDOUT else "stderr", text)
        elif which == "exited":
            exited = event.exited
    if exited is None:
        raise SandboxError("the sandbox ended the command without reporting how it exited")
    return bytes(stdout), bytes(stderr), exited


def _cwd_vanished(cwd: str, workdir: str, stdout: bytes, stderr: bytes, exited: pb.Exited) -> bool:
    """Whether the command failed only because the shell could not enter ``cwd``.

    The host's shell wrapper runs ``cd -- CWD || exit`` before the command and sets
    its report-the-cwd trap after, so a failed ``cd`` exits non-zero, reports no
    cwd and prints the shell's "can't cd" message naming the directory.
    """
    if not cwd or cwd == workdir or exited.cwd or exited.timed_out or exited.signal or exited.exit_code == 0:
        return False
    err = stderr.decode("utf-8", "replace")
    return not stdout and "cd" in err and cwd in err


def _result(stdout: bytes, stderr: bytes, exited: pb.Exited, timeout_ms: int) -> ToolResult:
    parts = []
    out = stdout.decode("utf-8", "replace").rstrip("\n")
    err = stderr.decode("utf-8", "replace").rstrip("\n")
    if out:
        parts.append(out)
    if err:
        parts.append(err)
    notes = []
    if exited.timed_out:
        notes.append(f"Command timed out after {timeout_ms} ms and was killed (with every process it started).")
    elif exited.signal:
        notes.append(f"Command was killed by signal {exited.signal}.")
    elif exited.exit_code != 0:
        notes.append(f"Exit code {exited.exit_code}")
    total = len(stdout) + len(stderr)
    kept = "The full output is kept in the session."
    if exited.truncated:
        # Only the first bytes were streamed; the host's counts and spill file have it all.
        total = exited.stdout_bytes + exited.stderr_bytes
        kept = f"The full output is in {exited.spill_path}."
        notes.append(
            f"Output was {total:,} bytes; only the start was streamed. The full output is in "
            f"{exited.spill_path} (read it with Read or Bash)."
        )
    text = "\n".join(parts)
    text, was_cut = cap_for_model(text, total, kept=kept)
    if notes:
        text = (text + "\n" if text else "") + "\n".join(notes)
    if not text:
        text = "(no output)"
    full = stdout + (b"\n" if stdout and stderr else b"") + stderr if was_cut else None
    is_error = exited.timed_out or exited.signal != 0 or exited.exit_code != 0
    return ToolResult(content=text, is_error=is_error, full_output=full)
