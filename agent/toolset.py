"""The set of tools offered to the model, and how a batch of calls is run."""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent import events as ev
from agent.lease import SandboxLease
from agent.permissions import PermissionGate
from agent.sandbox_client import (
    HostUnreachable,
    NoHostAnswers,
    SandboxAuthError,
    SandboxError,
    SandboxGone,
    SandboxInvalidRequest,
    SandboxLimitExceeded,
    SandboxNotRunning,
)
from agent.tools.base import Tool, ToolContext, ToolInputError, ToolResult
from agent.tools.catalog import default_tools
from agent.tools.views import CallView
from agent.workspace.checkpoints import Checkpointer
from session.plaintext import counted

__all__ = ["ToolCall", "ToolSet", "default_tools", "schema_problem"]

NOT_RUN_AFTER_DENIAL = "Not run: the user denied an earlier call of this batch and stopped the turn."


@dataclass
class ToolCall:
    """One tool_use block from the model."""

    id: str
    name: str
    input: dict[str, Any]


@dataclass
class ToolSet:
    """Runs the model's tool calls against one sandbox lease."""

    lease: SandboxLease
    tools: list[Tool] = field(default_factory=default_tools)
    read_paths: set[str] = field(default_factory=set)
    """Paths Read in this session; shared by every call (Write and Edit check it)."""
    gate: PermissionGate | None = None
    """Decides whether each call may run; None = every call runs."""
    checkpointer: Checkpointer | None = None
    """Takes a workspace checkpoint after every call that may change files; None = no checkpoints."""
    before_change: Callable[[], Awaitable[None]] | None = None
    """Awaited before a call that may change files (the workspace's baseline must be taken first)."""

    def __post_init__(self) -> None:
        self._by_name = {tool.name: tool for tool in self.tools}
        # Built once per mode: byte-identical schemas keep the prompt cache hitting all session long.
        self._schemas: dict[str, list[dict[str, Any]]] = {}

    @property
    def mode(self) -> str:
        """The permission mode the tools are offered in."""
        return self.gate.mode if self.gate is not None else "default"

    def schemas(self) -> list[dict[str, Any]]:
        """The tool definitions for the Messages API request: those the current mode offers."""
        mode = self.mode
        if mode not in self._schemas:
            self._schemas[mode] = [tool.schema() for tool in self.tools if tool.offered_in(mode)]
        return self._schemas[mode]

    def tool(self, name: str) -> Tool | None:
        """The tool called ``name``, if the session has one."""
        return self._by_name.get(name)

    async def run_all(
        self,
        calls: list[ToolCall],
        emit: Callable[[ev.AgentEvent], Awaitable[None]],
        finished: dict[str, ToolResult] | None = None,
    ) -> list[ToolResult]:
        """Run ``calls``: runs of read-only ones concurrently, the rest in order.

        Results come back in the order of the calls. Each result is also put in
        ``finished`` (by call id) as soon as its call ends, so an interrupted batch
        still knows which calls completed.
        """
        done = {} if finished is None else finished

        async def run(call: ToolCall) -> None:
            done[call.id] = await self.run_one(call, emit)

        index = 0
        while index < len(calls):
            if any(result.ends_turn for result in done.values()):
                # The user stopped the turn: the rest of the batch is answered, not run.
                for call in calls[index:]:
                    done[call.id] = ToolResult(NOT_RUN_AFTER_DENIAL, is_error=True)
                break
            end = index
            while end < len(calls) and self._read_only(calls[end]):
                end += 1
            if end > index + 1:
                await asyncio.gather(*(run(calls[i]) for i in range(index, end)))
                index = end
            else:
                await run(calls[index])
                index += 1
        return [done[call.id] for call in calls]

    async def _denied(
        self, call: ToolCall, emit: Callable[[ev.AgentEvent], Awaitable[None]], view: CallView | None = None
    ) -> ToolResult | None:
        if self.gate is None:
            return None
        tool = self._by_name[call.name]
        decision = await self.gate.check(tool, call.id, self._resolved_paths(call.input), emit, view=view)
        if decision.allow:
            return None
        reason = decision.reason.strip().rstrip(".")
        await emit(ev.PermissionDenied(call.id, call.name, call.input, reason))
        if decision.ends_turn:
            said = f"The user denied this {call.name} call" + (f": {reason}." if reason else ".")
            return ToolResult(
                f"{said} It did not run. The user stopped the turn here: wait for their next message "
                "before doing anything else.",
                is_error=True,
                ends_turn=True,
            )
        # The reason is a clause of its own, so it follows a colon instead of nesting in parentheses.
        said = (
            f"This {call.name} call was not allowed: {reason}."
            if reason
            else f"The user did not allow this {call.name} call."
        )
        return ToolResult(
            f"{said} It did not run. Do not retry it as is; change approach or ask the user.", is_error=True
        )

    def _resolved_paths(self, args: dict[str, Any]) -> dict[str, Any]:
        """``args`` with relative paths made absolute from the shell's directory, as the tools will.

        Permission rules and the user's prompt must see the path the tool touches.
        """
        resolved = dict(args)
        base = self.lease.cwd or self.lease.workdir
        for key in ("file_path", "path"):
            value = resolved.get(key)
            if isinstance(value, str) and value:
                resolved[key] = posixpath.normpath(posixpath.join(base, value))
        return resolved

    def _read_only(self, call: ToolCall) -> bool:
        tool = self._by_name.get(call.name)
        return tool is not None and tool.read_only

    async def run_one(self, call: ToolCall, emit: Callable[[ev.AgentEvent], Awaitable[None]]) -> ToolResult:
        """Run one call; every failure becomes an error result the model can act on."""
        tool = self._by_name.get(call.name)
        args_ok = isinstance(call.input, dict)
        view = (
            await tool.call_view_in(self.lease, self._resolved_paths(call.input))
            if tool is not None and args_ok
            else None
        )
        await emit(ev.ToolStarted(call.id, call.name, call.input, view))

        async def output(stream: str, text: str) -> None:
            await emit(ev.ToolOutput(call.id, stream, text))

        if tool is None:
            result = ToolResult(
                f"No such tool: {call.name}. Available tools: {', '.join(self._by_name)}.", is_error=True
            )
        elif not isinstance(call.input, dict):
            result = ToolResult(f"Invalid input for {call.name}: the input must be a JSON object.", is_error=True)
        elif (problem := schema_problem(tool.input_schema, call.input)) is not None:
            # Checked before asking permission: nobody should approve a call that cannot run.
            result = ToolResult(f"Invalid input for {call.name}: {problem}", is_error=True)
        elif (denial := await self._denied(call, emit, view)) is not None:
            result = denial
        else:
            ctx = ToolContext(
                self.lease,
                call.id,
                output,
                self.read_paths,
                emit=emit,
                set_permission_mode=self.gate.set_mode if self.gate is not None else None,
            )
            lost = False
            for attempt in (1, 2):
                seen = self.lease.info.sandbox_id if self.lease.info is not None else None
                client, host = self.lease.client, self.lease.host
                try:
                    if tool.changes_files and self.before_change is not None:
                        await self.before_change()
                    result = await tool.run(ctx, call.input)
                except HostUnreachable as exc:
                    if self.lease.connect is None:
                        result = ToolResult(_describe_sandbox_error(exc, self.lease), is_error=True)
                        break
                    outcome = await self._host_lost(exc, seen, client, host, emit)
                    if outcome is None and attempt == 1:
                        continue  # the call never reached the host, which is back: now it runs
                    result = outcome or ToolResult(_describe_sandbox_error(exc, self.lease), is_error=True)
                    lost = True
                    break
                except ToolInputError as exc:
                    result = ToolResult(f"Invalid input for {call.name}: {exc}", is_error=True)
                except (SandboxGone, SandboxNotRunning) as exc:
                    result = await self._sandbox_lost(exc, seen, emit)
                    lost = True
                except SandboxError as exc:
                    result = ToolResult(_describe_sandbox_error(exc, self.lease), is_error=True)
                except Exception as exc:  # noqa: BLE001 - one broken call must not end the session
                    result = ToolResult(
                        f"The {call.name} tool failed inside tether ({type(exc).__name__}: {exc}). "
                        "This is a bug in tether, not in your input; try another way.",
                        is_error=True,
                    )
                break
            await emit(
                ev.ToolFinished(
                    call.id, call.name, result.content, result.is_error, tool.result_view(call.input, result)
                )
            )
            if tool.changes_files and not lost:
                await self._checkpoint(call, emit)
            return result
        shown = tool.result_view(call.input, result) if tool is not None and args_ok else None
        await emit(ev.ToolFinished(call.id, call.name, result.content, result.is_error, shown))
        return result

    async def _checkpoint(self, call: ToolCall, emit: Callable[[ev.AgentEvent], Awaitable[None]]) -> None:
        """Record what ``call`` changed in the workspace; a failure is a notice, never the call's result."""
        if self.checkpointer is None or self.lease.info is None:
            return
        sandbox_id = self.lease.info.sandbox_id
        self.checkpointer.note_cwd(self.lease.cwd)
        try:
            await self.checkpointer.take(sandbox_id, after=call.id)
        except (SandboxGone, SandboxNotRunning):
            pass  # the next call finds the sandbox gone and replaces it; the last checkpoint stands
        except SandboxError as exc:
            await emit(ev.Status(f"Checkpoint after {call.name} not taken: {exc}"))

    async def _sandbox_lost(
        self, exc: SandboxError, seen: str | None, emit: Callable[[ev.AgentEvent], Awaitable[None]]
    ) -> ToolResult:
        """Start replacing a sandbox that vanished, and word what happened for the model.

        The replacement (and the workspace's restore) runs in the background: the
        model reads this result meanwhile, and its next tool call waits for it.
        """
        if self.checkpointer is None:
            # With a workspace, the replacement says it all in one line once it is done.
            await emit(ev.Status(f"Sandbox lost ({exc}); starting a new one from the same recipe…"))
        self.lease.begin_replace(str(exc), seen)
        self.read_paths.clear()
        lost = (
            f"The sandbox was lost while running this tool ({exc}). The call may or may not have "
            "taken effect before it was lost."
        )
        return ToolResult(
            f"{lost} {self._restore_words('A new sandbox is being started from the same recipe')}", is_error=True
        )

    async def _host_lost(
        self,
        exc: HostUnreachable,
        seen: str | None,
        client: Any,
        host: str,
        emit: Callable[[ev.AgentEvent], Awaitable[None]],
    ) -> ToolResult | None:
        """The host did not answer: reconnect or fail over (the lease does), and word the outcome for the model.

        None when the call surely never reached the host and a sandbox is ready again:
        the caller runs it now.
        """
        lease = self.lease
        try:
            if isinstance(exc, NoHostAnswers):
                raise exc  # a whole round over the hosts just failed: say so, do not start another
            await lease.recover(str(exc), silent=exc.silent, lost=client)
        except SandboxError as err:
            ran = (
                "This call did not reach it, so it did not run."
                if not exc.sent
                else "This call may or may not have run before the connection was lost."
            )
            return ToolResult(
                f"The sandbox is unreachable: {err}. {ran} tether keeps looking for a host in the background; "
                "your next tool call tries every host again. Tell the user if this persists.",
                is_error=True,
            )
        if not exc.sent:
            return None
        if lease.info is not None and lease.info.sandbox_id == seen:
            return ToolResult(
                f"The connection to the sandbox host at {host} broke while this tool ran ({exc}) and was "
                "re-established. The sandbox and its files survived, but this call may or may not have finished: "
                "check the state of what it was doing before going on.",
                is_error=True,
            )
        self.read_paths.clear()
        if lease.host != host:
            lost = (
                f"The sandbox host at {host} stopped answering while this tool ran ({exc}); the call may or "
                f"may not have taken effect there. The session moved to the sandbox host at {lease.host}."
            )
            start = "A new sandbox there was started from the same recipe"
        else:
            lost = (
                f"The sandbox host at {host} went away while this tool ran ({exc}) and came back without "
                "the sandbox; the call may or may not have taken effect before it was lost."
            )
            start = "A new sandbox was started from the same recipe"
        return ToolResult(f"{lost} {self._restore_words(start, ready=True)}", is_error=True)

    def _restore_words(self, start: str, *, ready: bool = False) -> str:
        """What a new sandbox holds, for the model: ``start`` says where it came from."""
        wait = "your next tool call runs in it" if ready else "your next tool call waits for it"
        keeper = self.checkpointer
        if keeper is not None and keeper.mode == "direct":
            return (
                "The workspace is the user's project directory itself, so every change that reached "
                f"it is still there. {start}, mounting it; {wait}. The shell starts in the workspace root."
            )
        if keeper is not None and keeper.seq >= 0:
            after = f", taken after tool call {keeper.last_tool}" if keeper.last_tool else ""
            return (
                f"{start}, with the workspace restored as of checkpoint {keeper.seq}{after} "
                f"({counted(len(keeper.state), 'file')}); {wait}. Changes made after that checkpoint, including any "
                "by this call, are not in it. The shell goes back to its directory if that still exists. "
                "Check the state of what this call was doing before going on."
            )
        return (
            f"{start}; {wait}. Its workspace starts fresh: files created or changed in the lost sandbox "
            "are gone, and the shell is back in the workspace root. Check the state before going on."
        )


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "array": list,
    "object": dict,
}


def schema_problem(schema: dict[str, Any], args: dict[str, Any]) -> str | None:
    """Why ``args`` do not fit a tool's input schema (top level), worded for the model; None if they fit.

    A null optional parameter counts as absent, as the tools treat it.
    """
    properties = schema.get("properties", {})
    missing = [key for key in schema.get("required", []) if args.get(key) is None]
    if missing:
        names = ", ".join(f"`{key}`" for key in missing)
        return f"missing required parameter{'s' if len(missing) > 1 else ''} {names}."
    if schema.get("additionalProperties") is False:
        extra = [key for key in args if key not in properties]
        if extra:
            names = ", ".join(f"`{key}`" for key in extra)
            known = ", ".join(f"`{key}`" for key in properties)
            return f"unexpected parameter{'s' if len(extra) > 1 else ''} {names}; the parameters are {known}."
    for key, value in args.items():
        spec = properties.get(key, {})
        kind = spec.get("type")
        expected = _JSON_TYPES.get(kind) if isinstance(kind, str) else None
        if value is None or expected is None:
            continue
        # bool is an int in Python, never a number in JSON.
        if not isinstance(value, expected) or (isinstance(value, bool) and kind != "boolean"):
            return f"`{key}` must be a {kind}, not {_json_type(value)}."
        if "enum" in spec and value not in spec["enum"]:
            return f"`{key}` must be one of {', '.join(repr(v) for v in spec['enum'])}, not {value!r}."
    return None


def _json_type(value: Any) -> str:
    for name, kind in (("boolean", bool), ("number", (int, float)), ("string", str), ("array", list), ("object", dict)):
        if isinstance(value, kind):
            return f"a {name}"
    return "null" if value is None else type(value).__name__


def _describe_sandbox_error(exc: SandboxError, lease: SandboxLease) -> str:
    """Word a sandbox failure so the model knows what happened and what it may do."""
    if isinstance(exc, SandboxInvalidRequest):
        return f"The sandbox refused the request: {exc}"
    if isinstance(exc, SandboxGone | SandboxNotRunning):
        return f"The sandbox was lost while running this tool ({exc}). The command may or may not have run."
    if isinstance(exc, SandboxLimitExceeded):
        return f"A sandbox limit was hit: {exc}"
    if isinstance(exc, SandboxAuthError):
        return f"The sandbox host at {lease.host} refused our credentials: {exc}"
    if isinstance(exc, HostUnreachable):
        # The error already names the host and the cause; say it once.
        text = str(exc)
        return f"{text[:1].upper()}{text[1:]}. The command may not have run."
    return f"Sandbox error: {exc}"
