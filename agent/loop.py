"""The agent loop: prompt -> model -> tool calls in the sandbox -> results -> ... -> answer.

It emits typed events to its driver and records every whole message in the
session log; it knows nothing of screens or terminals.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import events as ev
from agent.lease import SandboxLease
from agent.model import ModelClient, ModelError
from agent.permissions import PermissionGate
from agent.prompt import system_prompt
from agent.sandbox_client import SandboxError
from agent.text import readable_text
from agent.tools.base import ToolResult, cap_for_model
from agent.toolset import ToolCall, ToolSet
from agent.workspace.session import SessionWorkspace
from session.conversation import COMPACTION_PREAMBLE
from session.store import SessionLog

Emit = Callable[[ev.AgentEvent], Awaitable[None]]

COMPACT_PROMPT = (
    "Your context is being compacted. Write a summary of the conversation so far that lets you "
    "continue the work without it: the user's requests and intent, decisions made, files read "
    "and changed (with paths), commands run and what they showed, errors and how they were "
    "resolved, and what remains to do next. Be specific and complete; reply with the summary only."
)


def summary_message(summary: str) -> str:
    """The user message a compacted conversation starts from (the same text a resumed log rebuilds)."""
    return COMPACTION_PREAMBLE + summary


@dataclass
class SessionTotals:
    """Running totals across the session, for the result object and the status bar."""

    usage: dict[str, int] = field(
        default_factory=lambda: {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    )
    cost_usd: float | None = 0.0
    """None once any response's price was unknown."""
    api_ms: int = 0


@dataclass
class AgentLoop:
    """Drives one session: holds the conversation, the model, the tools and the log."""

    model: ModelClient
    lease: SandboxLease
    log: SessionLog
    project_dir: Path
    emit: Emit
    max_turns: int | None = None
    """Model requests allowed per prompt; None = no limit."""
    gate: PermissionGate | None = None
    """Permission checks for tool calls; None = every call runs."""
    workspace: SessionWorkspace | None = None
    """The session's workspace (checkpoints after file-changing calls); None = no checkpoints."""
    tools: ToolSet = field(init=False)
    totals: SessionTotals = field(default_factory=SessionTotals)
    _messages: list[dict[str, Any]] | None = field(default=None, repr=False)
    _system: list[dict[str, Any]] | None = field(default=None, repr=False)
    _system_plan_mode: bool = field(default=False, repr=False)
    _task: asyncio.Task | None = field(default=None, repr=False)
    _interrupted: bool = field(default=False, repr=False)
    _turns: int = field(default=0, repr=False)
    compact_at_tokens: int = 160_000
    """Compact automatically once the context reaches this many tokens (80% of a 200k window)."""
    _context_tokens: int = field(default=0, repr=False)
    _pending_calls: list[ToolCall] = field(default_factory=list, repr=False)
    """Tool calls of the last assistant message whose results are not recorded yet."""
    _finished_results: dict[str, ToolResult] = field(default_factory=dict, repr=False)
    _partial_output: dict[str, list[str]] = field(default_factory=dict, repr=False)
    """Live output of the running batch's calls, by tool_use id (what an interrupted command had printed)."""
    """Results of the running batch's calls that have finished, by tool_use id (kept if the rest is interrupted)."""

    def __post_init__(self) -> None:
        workspace = self.workspace
        self.tools = ToolSet(
            self.lease,
            gate=self.gate,
            checkpointer=workspace.checkpointer if workspace is not None else None,
            before_change=workspace.wait_baseline if workspace is not None else None,
        )

    async def run(self, prompt: str) -> ev.TurnFinished:
        """Answer one user prompt, running tools until the model ends its turn.

        ``interrupt()`` stops it: the model stream is closed, a running tool is
        cancelled (its process group killed in the sandbox), unanswered tool
        calls get error results, and the turn ends; the next prompt goes on cleanly.
        """
        self._interrupted = False
        self._turns = 0
        # Whatever the driver got (argv, stdin, a paste), the log and the API take only valid Unicode.
        task = asyncio.ensure_future(self._run(readable_text(prompt)))
        self._task = task
        try:
            return await task
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            return await self._record_interruption()
        finally:
            self._task = None

    def reload(self) -> None:
        """Rebuild the conversation from the log before the next prompt (after a rewind moved its branch)."""
        self._messages = None
        self._context_tokens = 0

    def interrupt(self) -> bool:
        """Stop the running turn; returns False if there was none."""
        if self._task is None or self._task.done():
            return False
        self._interrupted = True
        self._task.cancel()
        return True

    async def _record_interruption(self) -> ev.TurnFinished:
        assert self._messages is not None
        message = "Interrupted by the user; the tool did not finish and may or may not have run."
        if self._pending_calls:
            blocks = []
            for call in self._pending_calls:
                finished = self._finished_results.get(call.id)
                if finished is not None:
                    # It ran to the end before the interrupt: the model gets its real result.
                    blocks.append(self._record_result(call, finished))
                    continue
                said = message
                partial = "".join(self._partial_output.get(call.id, ()))
                if partial:
                    # What the command printed before it was stopped: often the reason the user stopped it.
                    shown, _ = cap_for_model(partial.rstrip("\n"))
                    said = (
                        "Interrupted by the user while it ran; it was stopped (with every process it started). "
                        f"Its output until then:\n{shown}"
                    )
                blocks.append(self._record_result(call, ToolResult(said, is_error=True)))
                await self.emit(ev.ToolFinished(call.id, call.name, said, True))
            self._messages.append({"role": "user", "content": blocks})
            self._pending_calls = []
            await self.emit(ev.ToolResults(blocks))
        self.log.append("interruption", {"reason": "user"})
        await self.emit(ev.Status("Interrupted."))
        return await self._finish("Interrupted by the user.", "interrupted", self._turns, is_error=True)

    def _record_result(self, call: ToolCall, result: ToolResult) -> dict[str, Any]:
        """Log one tool result; the tool_result block the model will see."""
        blob = self.log.put_blob(result.full_output) if result.full_output is not None else None
        self.log.append(
            "tool_result",
            {
                "tool_use_id": call.id,
                "tool_name": call.name,
                "content": result.content,
                "is_error": result.is_error,
                "output_blob": blob,
                "output_bytes": len(result.full_output)
                if result.full_output is not None
                else len(result.content.encode()),
            },
        )
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.id, "content": result.content}
        if result.is_error:
            block["is_error"] = True
        return block

    async def _run(self, prompt: str) -> ev.TurnFinished:
        if self._messages is None:
            self._messages = self.log.conversation()
        if prompt.strip().split(" ", 1)[0] == "/compact":
            try:
                summary = await self.compact(prompt.strip()[len("/compact") :].strip())
            except ModelError as exc:
                return await self._fail(f"Compaction failed: {exc}", 0)
            return await self._finish(summary, "compacted", 1)
        final_text = ""
        stop_reason: str | None = None
        try:
            await self._system_blocks()
            if self._context_tokens >= self.compact_at_tokens:
                # Compact before the new prompt goes in, so the prompt follows the summary
                # (in the messages and in the log) instead of vanishing into it.
                await self.compact("")
            self.log.append("user", {"content": prompt})
            self._messages.append({"role": "user", "content": [{"type": "text", "text": prompt}]})
            _merge_user_tail(self._messages)
            while True:
                if self.max_turns is not None and self._turns >= self.max_turns:
                    return await self._finish(
                        f"Stopped after {self._turns} model turns (--max-turns {self.max_turns}).",
                        "max_turns",
                        self._turns,
                        is_error=True,
                    )
                self._turns += 1
                if self._context_tokens >= self.compact_at_tokens:
                    await self.compact("")
                response = await self.model.respond(
                    system=await self._system_blocks(),
                    messages=_with_cache_breakpoint(self._messages),
                    tools=self.tools.schemas(),
                    emit=self.emit,
                )
                await self._record_response(response)
                stop_reason = response.stop_reason
                final_text = "".join(b["text"] for b in response.content if b["type"] == "text")
                calls = list(self._pending_calls)
                if not calls:
                    return await self._finish(final_text, stop_reason, self._turns)
                self._finished_results = {}
                self._partial_output = {}
                results = await self.tools.run_all(calls, self._emit_tool_event, finished=self._finished_results)
                blocks = [self._record_result(call, result) for call, result in zip(calls, results, strict=False)]
                self._messages.append({"role": "user", "content": blocks})
                self._pending_calls = []
                await self.emit(ev.ToolResults(blocks))
                if any(result.ends_turn for result in results):
                    # The user said no: the prompt is theirs again; the model reads why with their next message.
                    return await self._finish(final_text, "user_stopped", self._turns)
        except ModelError as exc:
            return await self._fail(str(exc), self._turns)
        except SandboxError as exc:
            return await self._fail(f"Sandbox: {exc}", self._turns)

    async def _emit_tool_event(self, event: ev.AgentEvent) -> None:
        """Pass a tool's event on, keeping live output for an interruption to report."""
        if isinstance(event, ev.ToolOutput):
            self._partial_output.setdefault(event.tool_use_id, []).append(event.text)
        await self.emit(event)

    async def compact(self, instructions: str) -> str:
        """Replace the conversation with a model-written summary; the log keeps everything.

        Returns the summary. The summary request sends the same system prompt and
        tools as every other request (with tools switched off) so it reuses the cache.
        """
        assert self._messages is not None
        await self.emit(ev.Status("Compacting the conversation…"))
        ask = COMPACT_PROMPT + (f"\n\nAdditional instructions from the user: {instructions}" if instructions else "")
        request = [*self._messages, {"role": "user", "content": [{"type": "text", "text": ask}]}]
        _merge_user_tail(request)
        if not request or request[0]["role"] != "user":
            return ""
        response = await self.model.respond(
            system=await self._system_blocks(),
            messages=_with_cache_breakpoint(request),
            tools=self.tools.schemas(),
            tool_choice={"type": "none"},
            emit=self.emit,
            quiet=True,
        )
        summary = "".join(b["text"] for b in response.content if b["type"] == "text").strip()
        if not summary:
            raise ModelError("the model returned an empty summary; the conversation was left as it was")
        self._count_usage(response)
        self.log.append("compaction", {"summary": summary, "instructions": instructions})
        self._messages[:] = [{"role": "user", "content": [{"type": "text", "text": summary_message(summary)}]}]
        self._context_tokens = 0
        await self.emit(ev.Status("Conversation compacted; the full history stays in the session log."))
        return summary

    async def _system_blocks(self) -> list[dict[str, Any]]:
        plan_mode = self.gate is not None and self.gate.mode == "plan"
        if self._system is not None and self._system_plan_mode != plan_mode:
            self._system = None  # entering or leaving plan mode changes what the model is told
        if self._system is None:
            self._system_plan_mode = plan_mode
            info = await self.lease.ready()
            text = system_prompt(
                workdir=info.workdir,
                sandbox_os=info.os,
                project_dir=self.project_dir,
                plan_mode=plan_mode,
                workspace_mode=self.workspace.mode if self.workspace is not None else "",
            )
            self._system = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
        return self._system

    async def _record_response(self, response) -> None:
        message = {
            "id": response.id,
            "model": response.model,
            "content": response.content,
            "stop_reason": response.stop_reason,
            "usage": response.usage,
        }
        self.log.append("assistant", {"message": message, "cost_usd": response.cost_usd})
        assert self._messages is not None
        self._messages.append({"role": "assistant", "content": response.content})
        # Set before any await, so an interrupt from here on answers these calls.
        self._pending_calls = [
            ToolCall(b["id"], b["name"], b["input"]) for b in response.content if b["type"] == "tool_use"
        ]
        self._count_usage(response)
        u = response.usage
        self._context_tokens = (
            u["input_tokens"] + u["cache_creation_input_tokens"] + u["cache_read_input_tokens"] + u["output_tokens"]
        )
        await self.emit(
            ev.AssistantMessage(response.content, response.stop_reason, response.id, response.model, response.usage)
        )
        await self.emit(
            ev.UsageUpdate(
                input_tokens=response.usage["input_tokens"],
                output_tokens=response.usage["output_tokens"],
                cache_creation_input_tokens=response.usage["cache_creation_input_tokens"],
                cache_read_input_tokens=response.usage["cache_read_input_tokens"],
                cost_usd=response.cost_usd,
                session_cost_usd=self.totals.cost_usd,
            )
        )

    def _count_usage(self, response) -> None:
        self.totals.api_ms += response.api_ms
        for key, value in response.usage.items():
            self.totals.usage[key] = self.totals.usage.get(key, 0) + value
        if self.totals.cost_usd is not None:
            self.totals.cost_usd = None if response.cost_usd is None else self.totals.cost_usd + response.cost_usd

    async def _finish(
        self, text: str, stop_reason: str | None, num_turns: int, *, is_error: bool = False
    ) -> ev.TurnFinished:
        done = ev.TurnFinished(text, stop_reason, num_turns, is_error=is_error)
        await self.emit(done)
        return done

    async def _fail(self, message: str, num_turns: int) -> ev.TurnFinished:
        await self.emit(ev.ErrorEvent(message))
        return await self._finish(message, None, num_turns, is_error=True)


def _merge_user_tail(messages: list[dict[str, Any]]) -> None:
    """Keep roles alternating: a new user message after a user message joins it."""
    if len(messages) >= 2 and messages[-1]["role"] == messages[-2]["role"] == "user":
        last = messages.pop()
        prev = messages[-1]
        if isinstance(prev["content"], str):
            prev["content"] = [{"type": "text", "text": prev["content"]}]
        prev["content"] = list(prev["content"]) + list(last["content"])


def _with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with a cache breakpoint on the last block, without touching the originals."""
    if not messages:
        return messages
    last = copy.copy(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    content = list(content)
    if content:
        content[-1] = {**content[-1], "cache_control": {"type": "ephemeral"}}
    last["content"] = content
    return messages[:-1] + [last]


def result_object(
    done: ev.TurnFinished,
    *,
    session_id: str,
    duration_ms: int,
    totals: SessionTotals,
    permission_denials: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The headless result object, with the fields and subtypes of Claude Code's ``result`` message.

    ``stop_reason`` and ``cost_known`` are tether's own additions. An error that
    ends the run before any turn gets the same shape (zero usage, no turns).
    """
    if not done.is_error:
        subtype = "success"
    elif done.stop_reason == "max_turns":
        subtype = "error_max_turns"
    else:
        subtype = "error_during_execution"
    usage = {key: 0 for key in SessionTotals().usage}
    usage.update(totals.usage)
    return {
        "type": "result",
        "subtype": subtype,
        "is_error": done.is_error,
        "duration_ms": duration_ms,
        "duration_api_ms": totals.api_ms,
        "num_turns": done.num_turns,
        "result": done.result,
        "session_id": session_id,
        "total_cost_usd": totals.cost_usd if totals.cost_usd is not None else 0.0,
        "usage": usage,
        "permission_denials": list(permission_denials or []),
        "uuid": str(uuid.uuid4()),
        "stop_reason": done.stop_reason,
        "cost_known": totals.cost_usd is not None,
    }


def result_json(done: ev.TurnFinished, **fields: Any) -> str:
    """``result_object`` as one JSON line (without the newline)."""
    return json.dumps(result_object(done, **fields))
