"""Typed events the agent loop emits to whoever drives it (the TUI or the headless printer).

The loop knows nothing of the screen: it posts these and, for questions that
need the user, waits on the future a request carries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class PermissionDecision:
    """The user's answer to a PermissionRequest."""

    allow: bool
    always: bool = False
    """Remember this rule for the project."""
    reason: str = ""
    """Said to the model when denied."""


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
