"""The headless driver: ``tether -p PROMPT``, printing text, one JSON result, or a JSON event stream.

``json`` and ``stream-json`` follow the message shapes of Claude Code's
headless mode, so scripts written for ``claude -p`` read tether's output
unchanged. Followed: the Agent SDK's TypeScript reference, "Message Types"
(docs.claude.com/en/docs/claude-code/sdk/sdk-typescript, as of 2025-11:
``SDKSystemMessage``, ``SDKAssistantMessage``, ``SDKUserMessage``,
``SDKPartialAssistantMessage``, ``SDKResultMessage``, ``SDKPermissionDenial``).

stream-json, one JSON object per line, every line with ``session_id``, ``uuid``
and (on messages) ``parent_tool_use_id``, always null since tether has no subagents:

- first ``{"type": "system", "subtype": "init", cwd, model, tools, permissionMode,
  apiKeySource, mcp_servers: [], slash_commands: [], output_style, "tether": {...}}``;
  tether's own facts (sandbox host, workspace mode, version) sit under ``tether``;
- ``{"type": "assistant", "message": {id, type, role, model, content, stop_reason,
  stop_sequence, usage}}`` for each whole API message (Claude Code sometimes splits a
  message's blocks over several lines; one line per message is the same shape);
- ``{"type": "user", "message": {"role": "user", "content": [tool_result...]}}`` with
  each batch of tool results the model is sent (the prompt itself is not echoed);
- ``{"type": "stream_event", "event": RAW_API_EVENT}`` only with ``--include-partial-messages``;
- last, the ``result`` object (see ``agent.loop.result_object``), also what ``json`` prints.

Status notices and errors go to stderr in every format, so stdout holds only those shapes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from typing import Any, TextIO

from agent import events as ev
from agent.harness import Harness, HarnessError, HarnessOptions
from agent.loop import SessionTotals, result_object
from agent.pricing import price_of
from agent.sandbox_client import SandboxError
from session.errors import SessionStoreError

OUTPUT_FORMATS = ("text", "json", "stream-json")

HEADLESS_DENIAL = "no one is there to approve it in a headless run"
"""Why an asked-for permission is denied headless (the model reads it after "not allowed: ")."""


class HeadlessPrinter:
    """Turns loop events into the chosen output format."""

    def __init__(self, output_format: str, out: TextIO, err: TextIO) -> None:
        self.output_format = output_format
        self.out = out
        self.err = err
        self.session_id = ""
        """Stamped on every stream-json line; set once the session is open."""
        self.permission_denials: list[dict[str, Any]] = []
        """Every tool call that was not allowed, as Claude Code's ``permission_denials`` lists them."""

    async def __call__(self, event: ev.AgentEvent) -> None:
        """Handle one event from the loop."""
        if isinstance(event, ev.PermissionRequest):
            # Nobody can answer headless: the mode decides, and an open question is a no.
            if not event.future.done():
                event.future.set_result(ev.PermissionDecision(allow=False, reason=HEADLESS_DENIAL))
        elif isinstance(event, ev.PlanApprovalRequest):
            # Nobody can approve a plan headless: it stands as the answer, and the turn ends there.
            if not event.future.done():
                event.future.set_result(ev.PlanDecision(approve=False))
        elif isinstance(event, ev.PermissionDenied):
            self.permission_denials.append(
                {"tool_name": event.name, "tool_use_id": event.tool_use_id, "tool_input": event.input}
            )
            if self.output_format == "text":
                self.say(f"denied {event.name} {_brief(event.input)}: {event.reason}")
        elif isinstance(event, ev.Status):
            self.say(event.message)
        elif isinstance(event, ev.ErrorEvent) and self.output_format == "text":
            self.say(event.message)
        if self.output_format != "stream-json":
            return
        if isinstance(event, ev.AssistantMessage):
            message = {
                "id": event.id,
                "type": "message",
                "role": "assistant",
                "model": event.model,
                "content": event.content,
                "stop_reason": event.stop_reason,
                "stop_sequence": None,
                "usage": event.usage,
            }
            self.line({"type": "assistant", "message": message, "parent_tool_use_id": None})
        elif isinstance(event, ev.ToolResults):
            self.line(
                {"type": "user", "message": {"role": "user", "content": event.content}, "parent_tool_use_id": None}
            )
        elif isinstance(event, ev.StreamEvent):
            self.line({"type": "stream_event", "event": event.event, "parent_tool_use_id": None})

    def init_line(self, harness: Harness) -> None:
        """The ``system``/``init`` line that opens a stream-json run."""
        assert harness.loop is not None and harness.workspace is not None
        from importlib.metadata import PackageNotFoundError, version

        try:
            tether_version = version("tether")
        except PackageNotFoundError:
            tether_version = "unknown"
        self.line(
            {
                "type": "system",
                "subtype": "init",
                "cwd": str(harness.workspace.project_dir),
                "tools": [tool["name"] for tool in harness.loop.tools.schemas()],
                "mcp_servers": [],
                "model": harness.model.model,
                "permissionMode": harness.options.permission_mode,
                "slash_commands": ["compact"],
                "apiKeySource": _api_key_source(),
                "output_style": "default",
                "tether": {
                    "version": tether_version,
                    "sandbox": harness.host_label,
                    "workspace": harness.workspace.mode,
                },
            }
        )

    def line(self, obj: dict[str, Any]) -> None:
        """Write one stream-json line, stamped with the session and a fresh uuid."""
        obj.setdefault("session_id", self.session_id)
        obj.setdefault("uuid", str(uuid.uuid4()))
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def say(self, message: str) -> None:
        """A notice on stderr, prefixed ``tether:`` once."""
        print(message if message.startswith("tether:") else f"tether: {message}", file=self.err, flush=True)


def _brief(args: dict[str, Any]) -> str:
    """A tool call's input in a few words, for a one-line notice."""
    value = next(
        (args[key] for key in ("command", "file_path", "path", "pattern") if isinstance(args.get(key), str)), None
    )
    text = value if value is not None else json.dumps(args)
    return f"({text[:77] + '…' if len(text) > 78 else text})"


def _api_key_source() -> str:
    """Where the model credentials come from, in the words Claude Code's init line uses."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        if os.environ.get(name):
            return name
    return "none"


async def run_headless(
    options: HarnessOptions,
    prompt: str,
    output_format: str,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    *,
    include_partial_messages: bool = False,
) -> int:
    """Run one prompt to completion; return the process exit code."""
    started = time.monotonic()
    printer = HeadlessPrinter(output_format, out, err)
    harness = Harness(options, printer)
    harness.model.stream_events = include_partial_messages and output_format == "stream-json"
    if price_of(harness.model.model) is None:
        # Said once, up front: every answer of this run is priced by this model, so all are unknown.
        printer.say(f"cost unknown: tether has no price for the model {harness.model.model}")
    try:
        try:
            await harness.start()
        except (HarnessError, SandboxError, SessionStoreError) as exc:
            message = str(exc)
            if output_format == "text":
                printer.say(message)
            else:
                # The same object as any result: the session's id if one was opened, else a fresh one.
                session_id = harness.log.session_id if harness.log is not None else str(uuid.uuid4())
                failed = ev.TurnFinished(message, None, 0, is_error=True)
                printer.session_id = session_id
                printer.line(_result(failed, session_id, started, SessionTotals(), printer))
            return 1
        printer.session_id = harness.session_id
        if output_format == "stream-json":
            printer.init_line(harness)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, harness.interrupt)
        try:
            done = await harness.run(prompt)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        assert harness.loop is not None
        if output_format == "text":
            if done.result:
                print(done.result, file=out if not done.is_error else err, flush=True)
        else:
            printer.line(_result(done, harness.session_id, started, harness.loop.totals, printer))
        return 1 if done.is_error else 0
    finally:
        await asyncio.shield(harness.close())


def report_error(message: str, output_format: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Report a run that failed before it began (bad arguments, no credentials), in the chosen format; return 1."""
    if output_format == "text":
        print(message if message.startswith("tether:") else f"tether: {message}", file=err, flush=True)
    else:
        failed = ev.TurnFinished(message, None, 0, is_error=True)
        result = result_object(failed, session_id=str(uuid.uuid4()), duration_ms=0, totals=SessionTotals())
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 1


def _result(
    done: ev.TurnFinished, session_id: str, started: float, totals: SessionTotals, printer: HeadlessPrinter
) -> dict[str, Any]:
    return result_object(
        done,
        session_id=session_id,
        duration_ms=int((time.monotonic() - started) * 1000),
        totals=totals,
        permission_denials=printer.permission_denials,
    )
