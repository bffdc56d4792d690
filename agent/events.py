"""Typed events the agent loop emits to whoever drives it (the TUI or the headless printer).

The loop knows nothing of the screen: it posts these and, for questions that
need the user, waits on the future a request carries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from agent.tools.views import CallView, ResultView


@dataclass
class AgentEvent:
    """Base of every event the loop emits."""


@dataclass
class TextDelta(AgentEvent):
    """A piece of the assistant's answer as it streams."""

    text: str


@dataclass
class StreamRestarted(AgentEvent):
    """The answer streaming so far was cut off and is being asked for again: drop its partial text."""


@dataclass
class ThinkingDelta(AgentEvent):
    """A piece of the model's visible thinking."""

    text: str


@dataclass
class StreamEvent(AgentEvent):
    """One raw event of the Messages API stream, as the API sent it (only when the driver asks for them)."""

    event: dict[str, Any]


@dataclass
class AssistantMessage(AgentEvent):
    """One whole assistant message, after its stream ended."""

    content: list[dict[str, Any]]
    """The API's content blocks (text, thinking, tool_use) as plain dicts."""
    stop_reason: str | None
    id: str = ""
    """The API's message id."""
    model: str = ""
    """The model that answered, as the API named it."""
    usage: dict[str, int] = field(default_factory=dict)
    """This message's token usage."""


@dataclass
class ToolStarted(AgentEvent):
    """A tool call is about to run in the sandbox."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    view: CallView | None = None
    """How the tool wants the call shown; None for a tool nobody knows."""


@dataclass
class ToolOutput(AgentEvent):
    """Live output of a running tool."""

    tool_use_id: str
    stream: str
    """``stdout`` or ``stderr``."""
    text: str


@dataclass
class ToolFinished(AgentEvent):
    """A tool call finished; ``content`` is what the model sees."""

    tool_use_id: str
    name: str
    content: str
    is_error: bool
    view: ResultView | None = None
    """How the tool wants the result shown; None: as text."""


@dataclass
class ToolResults(AgentEvent):
    """The user message that carries a batch's tool results back to the model."""

    content: list[dict[str, Any]]
    """``tool_result`` blocks, as the model will see them."""


@dataclass
class PermissionDenied(AgentEvent):
    """A tool call did not run because it was not allowed (by a rule, the mode, or nobody to ask)."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    """The input as the model sent it."""
    reason: str


@dataclass
class PermissionRequest(AgentEvent):
    """The loop asks the user whether a tool may run; the driver resolves ``future``."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    future: asyncio.Future[PermissionDecision] = field(repr=False)
    view: CallView | None = None
    """The call as the tool shows it (the command and its description, the diff of an edit)."""
    suggested_rule: str = ""
    """The rule "allow always" offers, e.g. ``Bash(npm test:*)``."""


@dataclass
class PermissionDecision:
    """The user's answer to a PermissionRequest."""

    allow: bool
    always: bool = False
    """Remember a rule for the project."""
    reason: str = ""
    """Said to the model when denied."""
    rule: str = ""
    """With ``always``: the rule to save (the suggested one, perhaps edited); empty: the suggested one."""
    ends_turn: bool = False
    """A denial by the user: the turn stops and the prompt is theirs again (the model keeps the reason)."""
    from_user: bool = False
    """Set by the gate when the answer came from asking, not from the mode or a rule."""


@dataclass
class PlanApprovalRequest(AgentEvent):
    """The model presents its plan (ExitPlanMode); the driver resolves ``future`` with the user's answer."""

    tool_use_id: str
    plan: str
    """The plan, in Markdown."""
    future: asyncio.Future[PlanDecision] = field(repr=False)


@dataclass
class PlanDecision:
    """The user's answer to a plan."""

    approve: bool
    mode: str = "default"
    """With ``approve``: the permission mode to go on in."""
    feedback: str = ""
    """Without ``approve``: what to change (sent to the model); empty: the turn stops and waits for the user."""


@dataclass
class PermissionModeChanged(AgentEvent):
    """The session's permission mode changed (the user approved a plan, or cycled the mode)."""

    mode: str


@dataclass
class SandboxState(AgentEvent):
    """The sandbox's state as the harness last saw it, for the status bar."""

    state: str
    """``starting``, ``ready``, ``lost``, ``restoring`` or ``unreachable``."""
    host: str
    """The host's address as the user gave it (``embedded`` for the embedded host)."""
    rtt_ms: float | None = None
    """The last round trip to the host, in milliseconds; None when none was measured."""
    detail: str = ""
    """Why (for ``lost`` and ``unreachable``)."""


@dataclass
class Status(AgentEvent):
    """Something the user should see in passing: retrying, provisioning, reconnecting."""

    message: str


@dataclass
class UsageUpdate(AgentEvent):
    """Token usage and cost after a model response, and the session's running totals."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float | None
    """Cost of this response; None when the model's price is unknown."""
    session_cost_usd: float | None


@dataclass
class TurnFinished(AgentEvent):
    """The model ended its turn (or the loop stopped); ``result`` is the final text."""

    result: str
    stop_reason: str | None
    num_turns: int
    is_error: bool = False


@dataclass
class ErrorEvent(AgentEvent):
    """A failure the user must read; the turn ends after it."""

    message: str
