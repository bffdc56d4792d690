"""What every tool is: a name, a schema the model sees, and a ``run`` against the sandbox."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.lease import SandboxLease
from agent.tools.views import CallView, ResultView, one_line

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
    ends_turn: bool = False
    """The user stopped the turn here (they denied the call): the loop hands the prompt back to them."""


@dataclass
class ToolContext:
    """What a running tool may use: the sandbox, a way to show live output, session state."""

    lease: SandboxLease
    tool_use_id: str
    output: Callable[[str, str], Awaitable[None]]
    """Send live output: ``await output("stdout", text)``."""
    read_paths: set[str] = field(default_factory=set)
    """Sandbox paths the model has Read in this session (Write refuses to clobber others)."""
    emit: Callable[[Any], Awaitable[None]] | None = None
    """Send an event to the driver (a question for the user); None where nobody drives."""
    set_permission_mode: Callable[[str], None] | None = None
    """Change the session's permission mode (leaving plan mode); None where there is no gate."""


class Tool(abc.ABC):
    """One tool the model can call."""

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool = False
    """Changes nothing in the sandbox: runs concurrently with other read-only calls, needs no
    permission, and is what plan mode allows."""
    changes_files: bool = False
    """Whether a call may change the workspace (a checkpoint follows each one)."""
    family: str = ""
    """The permission family whose rules cover this tool (``Edit`` for Write, ``Read`` for Grep); empty: its name."""
    subject: str = ""
    """The input key a rule's ``(spec)`` matches: ``command`` (a command or ``prefix:*``), ``file_path``
    or ``path`` (a path glob); empty: a rule on this tool has no spec."""
    subject_is_directory: bool = False
    """The subject is a directory the tool reads below (Grep, Glob): a rule on ``dir/**`` covers ``dir``."""

    @property
    def permission_family(self) -> str:
        """The rule name that covers this tool: ``Bash``, ``Read``, ``Edit``..."""
        return self.family or self.name

    def schema(self) -> dict[str, Any]:
        """The tool's definition as the Messages API takes it."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}

    def offered_in(self, mode: str) -> bool:
        """Whether the model is offered this tool in permission mode ``mode``."""
        return True

    def rule_subject(self, args: dict[str, Any]) -> str | None:
        """What a rule's spec is matched against in this call (the command, the path); None: nothing."""
        value = args.get(self.subject) if self.subject else None
        return value if isinstance(value, str) and value else None

    def suggested_rule(self, args: dict[str, Any], workdir: str) -> str:
        """The allow rule "allow always" offers for this call (the user may edit it)."""
        subject = self.rule_subject(args)
        if subject is None:
            return self.permission_family
        root = workdir.rstrip("/") + "/"
        return f"{self.permission_family}({subject[len(root) :] if subject.startswith(root) else subject})"

    def summary(self, args: dict[str, Any]) -> str:
        """One line that says what the call does, e.g. ``Read  /workspace/app.py``."""
        subject = self.rule_subject(args)
        if subject is None:
            import json

            return one_line(self.name, json.dumps(args, ensure_ascii=False) if args else "")
        return one_line(self.name, subject)

    def call_view(self, args: dict[str, Any]) -> CallView:
        """How this call is shown before and while it runs."""
        return CallView("text", self.summary(args), path=str(args.get("file_path") or args.get("path") or ""))

    async def call_view_in(self, lease: SandboxLease, args: dict[str, Any]) -> CallView:
        """How this call is shown, looking at the sandbox if that says more (Write: a diff against the file)."""
        return self.call_view(args)

    def result_view(self, args: dict[str, Any], result: ToolResult) -> ResultView:
        """How this call's result is shown."""
        return ResultView("text", result.content)

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
