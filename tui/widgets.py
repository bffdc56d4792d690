"""The TUI's small widgets: a user message, an error, a notice, a diff (tool panels: ``tui.tool_panels``)."""

from __future__ import annotations

from textual.widgets import Static

from tui.prompt import PromptArea as PromptArea  # it lives in tui.prompt now; still importable from here


class UserMessage(Static):
    """A prompt the user sent, as it appears in the transcript."""


class ErrorMessage(Static):
    """An error the user must read."""


class Notice(Static):
    """A passing notice: retrying, sandbox provisioned, a warning."""


class StatusBar(Static):
    """A one-line status (the snapshot screens' fixed stand-in for ``tui.status.StatusLine``)."""


class DiffView(Static):
    """A unified diff in the transcript, coloured as one (``/diff``)."""

    def __init__(self, diff: str) -> None:
        """Show ``diff`` (git-style unified diff text)."""
        from tui.tool_panels import unified_diff_text

        super().__init__(unified_diff_text(diff))
        self.diff = diff
        """The diff text shown."""
