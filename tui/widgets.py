"""The TUI's own widgets: a user message, a tool call panel, the status bar."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.widgets import Collapsible, Log, Static

from agent.tools.views import CallView, ResultView
from tui.prompt import PromptArea as PromptArea  # it lives in tui.prompt now; still importable from here


class UserMessage(Static):
    """A prompt the user sent, as it appears in the transcript."""


class ErrorMessage(Static):
    """An error the user must read."""


class Notice(Static):
    """A passing notice: retrying, sandbox provisioned, a warning."""


def tool_title(name: str, args: dict[str, Any], view: CallView | None = None) -> str:
    """A one-line summary of a tool call, e.g. ``Bash  ls -la``: the tool's own, else its input."""
    if view is not None:
        return view.title
    detail = json.dumps(args, ensure_ascii=False).replace("\n", " ⏎ ")
    if len(detail) > 100:
        detail = detail[:99] + "…"
    return f"{name}  {detail}"


class ToolCallPanel(Collapsible):
    """A tool call: its title, its live output, and how it ended."""

    def __init__(self, tool_use_id: str, name: str, args: dict[str, Any], view: CallView | None = None) -> None:
        super().__init__(title=f"⏵ {tool_title(name, args, view)}", collapsed=False, classes="tool-call running")
        self.tool_use_id = tool_use_id
        """The tool_use id this panel shows."""
        self.tool_name = name
        """The tool's name."""
        self.output = Log(max_lines=2000, auto_scroll=True, classes="tool-output")
        """Live output of the call."""
        self._streamed = False

    def compose(self) -> ComposeResult:
        yield from super().compose()

    def on_mount(self) -> None:
        self.query_one(Collapsible.Contents).mount(self.output)

    def write_output(self, text: str) -> None:
        """Append live output."""
        self._streamed = True
        self.output.write(text)

    def finish(self, content: str, is_error: bool, view: ResultView | None = None) -> None:
        """Show the result; tools that did not stream show what the model saw."""
        self.remove_class("running")
        self.add_class("error" if is_error else "ok")
        self.title = ("✗ " if is_error else "✓ ") + self.title[2:]
        if not self._streamed or is_error:
            lines = content.splitlines()
            shown = "\n".join(lines[:200]) + (f"\n… {len(lines) - 200} more lines" if len(lines) > 200 else "")
            if self._streamed:
                self.output.write("\n")
            self.output.write(shown)
        if view is not None and view.collapsed:
            self.collapsed = True


class StatusBar(Static):
    """Model, tokens and cost, sandbox host and state."""


class DiffView(Static):
    """A unified diff in the transcript, coloured as one (``/diff``)."""

    def __init__(self, diff: str) -> None:
        """Show ``diff`` (git-style unified diff text)."""
        from rich.syntax import Syntax

        super().__init__(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True, background_color="default"))
        self.diff = diff
        """The diff text shown."""
