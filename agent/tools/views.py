"""How a tool call and its result are shown, as plain data: the driver turns it into widgets or lines.

Tools build these; the TUI never matches on tool names to know how to show a call.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

CALL_KINDS = ("command", "diff", "checklist", "text")
"""``command``: a shell command; ``diff``: a change to a file; ``checklist``: a task list; ``text``: anything else."""


@dataclass(frozen=True)
class ChecklistItem:
    """One task of a checklist."""

    text: str
    status: str
    """``pending``, ``in_progress`` or ``completed``."""


@dataclass(frozen=True)
class CallView:
    """How one tool call is shown (in the transcript and in the permission dialog)."""

    kind: str
    """One of ``CALL_KINDS``."""
    title: str
    """The one-line summary, e.g. ``Bash  npm test``."""
    text: str = ""
    """The command, the unified diff, or the text to show."""
    description: str = ""
    """What the call is for, in the model's words (Bash's ``description``)."""
    path: str = ""
    """The file the call touches, if any."""
    items: tuple[ChecklistItem, ...] = field(default_factory=tuple)
    """A checklist's items."""


@dataclass(frozen=True)
class ResultView:
    """How a finished call's result is shown."""

    kind: str
    """``text`` (the result as the model saw it), ``checklist`` or ``none`` (the call view says it all)."""
    text: str = ""
    collapsed: bool = False
    """Folded by default (a file's content the user rarely wants to read)."""
    items: tuple[ChecklistItem, ...] = field(default_factory=tuple)


def one_line(name: str, detail: str, limit: int = 100) -> str:
    """``name  detail`` on one line, the detail cut to ``limit`` characters."""
    detail = detail.replace("\n", " ⏎ ")
    if len(detail) > limit:
        detail = detail[: limit - 1] + "…"
    return f"{name}  {detail}" if detail else name


def text_diff(path: str, old: str, new: str) -> str:
    """A unified diff of ``old`` → ``new``, headed with ``path``."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path.lstrip('/')}", f"b/{path.lstrip('/')}"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
