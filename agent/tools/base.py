"""What every tool is: a name, a schema the model sees, and a ``run`` against the sandbox."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.lease import SandboxLease

MODEL_OUTPUT_CAP = 30_000
"""Characters of a tool's output the model sees; the rest stays in the blob store."""


class ToolInputError(Exception):
    """The model's input does not fit the tool; the message tells it what to fix."""


@dataclass
class ToolResult:
    """What a tool call produced."""

    content: str
    """What the model sees."""
    is_error: bool = False
    full_output: bytes | None = None
    """The whole output when ``content`` is a cut of it, to keep in the blob store."""


@dataclass
class ToolContext:
    """What a running tool may use: the sandbox, a way to show live output, session state."""

    lease: SandboxLease
    tool_use_id: str
    output: Callable[[str, str], Awaitable[None]]
    """Send live output: ``await output("stdout", text)``."""
    read_paths: set[str] = field(default_factory=set)
    """Sandbox paths the model has Read in this session (Write refuses to clobber others)."""


class Tool(abc.ABC):
    """One tool the model can call."""

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool = False
    """Read-only tools may run concurrently and need no permission."""
    changes_files: bool = False
    """Whether a call may change the workspace (a checkpoint follows each one)."""

    def schema(self) -> dict[str, Any]:
        """The tool's definition as the Messages API takes it."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}

    @abc.abstractmethod
    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Run the call; raise ToolInputError for input the model must fix."""


def require(args: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    """``args[key]`` checked against ``kind``; a missing or wrong value is a ToolInputError."""
    if key not in args or args[key] is None:
        if optional:
            return None
        raise ToolInputError(f"Missing required parameter `{key}`.")
    value = args[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ToolInputError(f"Parameter `{key}` must be {kind.__name__}, got {type(value).__name__}.")
    return value


def cap_for_model(
    text: str, total_bytes: int | None = None, *, kept: str = "The full output is kept in the session."
) -> tuple[str, bool]:
    """Cut ``text`` to the model's cap, saying how much was left out and where the rest is (``kept``); returns (text, was_cut)."""
    if len(text) <= MODEL_OUTPUT_CAP:
        return text, False
    head = text[: MODEL_OUTPUT_CAP // 2]
    tail = text[-MODEL_OUTPUT_CAP // 2 :]
    size = f"{total_bytes:,} bytes" if total_bytes is not None else f"{len(text):,} characters"
    note = (
        f"\n\n[... output cut: {size} in all; the model sees the first and last "
        f"{MODEL_OUTPUT_CAP // 2:,} characters. {kept} ...]\n\n"
    )
    return head + note + tail, True
