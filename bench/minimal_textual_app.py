"""The smallest Textual app shaped like tether's screen: a scroll view, a prompt and a status line.

``bench/bench_tui_start.py`` starts it as the floor of any Textual program started the same way.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static, TextArea

READY_TEXT = "minimal app takes input"
"""The prompt's placeholder: on screen once the app has painted."""


class MinimalApp(App[None]):
    """A scroll view, a ``TextArea`` with focus and a status line."""

    CSS = """
    VerticalScroll { height: 1fr; }
    TextArea { height: 3; }
    Static { height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield VerticalScroll()
        yield TextArea(placeholder=READY_TEXT)
        yield Static("model · tokens · status")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()


if __name__ == "__main__":
    MinimalApp().run()
