"""Tool calls in the transcript: a title line, the live output, how it ended; long output folded.

Bash shows its command and description, then its output as it arrives, then its exit
status and duration. Edit shows old_string→new_string as a coloured diff, Write the
new content, TodoWrite a checklist. Output longer than ``FOLD_LINES`` is folded to its
first and last lines; the app's expand key (or Enter on a focused panel) unfolds it.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from tui.rendered import RenderedLines, render_strips

if TYPE_CHECKING:
    from agent.tools.views import CallView

FOLD_LINES = 12
"""Output longer than this many lines is folded."""
FOLD_HEAD = 4
"""Lines shown before the fold."""
FOLD_TAIL = 6
"""Lines shown after the fold."""
clock = time.monotonic
"""Where durations are read from (a test may stop it)."""
EXPAND_KEY = "ctrl+o"
"""The app's key that unfolds (and folds again) tool output and thinking."""

_TITLE_KEYS = {
    "Bash": "command",
    "Read": "file_path",
    "Write": "file_path",
    "Edit": "file_path",
    "Glob": "pattern",
    "Grep": "pattern",
}
_ENDING = re.compile(
    r"\n?(Exit code -?\d+|Command timed out after .*|Command was killed by signal .*)(\n[^\n]*)*\Z", re.DOTALL
)


def tool_title(name: str, args: dict[str, Any]) -> str:
    """A one-line summary of a tool call, e.g. ``Bash  ls -la``."""
    key = _TITLE_KEYS.get(name)
    detail = args.get(key) if key else None
    if name == "TodoWrite" and isinstance(args.get("todos"), list):
        detail = f"{len(args['todos'])} items"
    if not isinstance(detail, str):
        detail = json.dumps(args, ensure_ascii=False)
    detail = detail.replace("\n", " ⏎ ")
    if len(detail) > 100:
        detail = detail[:99] + "…"
    return f"{name}  {detail}"


def edit_diff(old: str, new: str) -> list[str]:
    """old→new as unified diff lines (without file headers), three lines of context."""
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=3)
    return [line for line in lines if not line.startswith(("---", "+++"))]


def diff_text(lines: list[str]) -> Text:
    """Diff lines coloured as one: additions green, removals red, hunks dim."""
    text = Text()
    for line in lines:
        style = ""
        if line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "dim cyan"
        text.append(line + "\n", style=style)
    text.rstrip()
    return text


def unified_diff_text(diff: str, *, headers: bool = True) -> Text:
    """A unified diff (``git diff`` style) in the terminal's own colours, which read on light and dark
    themes alike; its file headers bold, or left out (``headers=False``: the title names the file)."""
    text = Text()
    in_hunk = False
    for line in diff.rstrip("\n").splitlines():
        if line.startswith("diff "):
            in_hunk = False
        elif line.startswith("@@"):
            in_hunk = True
        if line.startswith("diff ") or (not in_hunk and line.startswith(("--- ", "+++ ", "index "))):
            if headers:
                text.append(line + "\n", style="bold")
            continue
        text.append_text(diff_text([line]))
        text.append("\n")
    text.rstrip()
    return text


def todo_text(todos: list[Any]) -> Text:
    """A TodoWrite list as a checklist."""
    text = Text()
    for item in todos:
        if not isinstance(item, dict):
            continue
        status = item.get("status", "pending")
        mark, style = {"completed": ("☑", "dim strike"), "in_progress": ("◐", "bold")}.get(status, ("☐", ""))
        text.append(f"{mark} {item.get('content', '')}\n", style=style)
    text.rstrip()
    return text


class FoldedText(RenderedLines):
    """Text (wrapped, never cut) that folds to its first and last lines when long."""

    DEFAULT_CSS = """
    FoldedText {
        height: auto;
        padding: 0 1 0 3;
    }
    """

    expanded: reactive[bool] = reactive(False)
    """Whether all of it is shown."""

    def __init__(self, text: Text | None = None, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.text = text or Text()
        """What is shown (folded or not)."""

    def set_text(self, text: Text) -> None:
        """Show ``text`` instead."""
        self.text = text
        self.invalidate()

    def watch_expanded(self) -> None:
        """Fold or unfold."""
        self.invalidate()

    @property
    def hidden_lines(self) -> int:
        """How many lines the fold hides (0: none)."""
        count = self.text.plain.count("\n") + 1 if self.text.plain else 0
        return 0 if self.expanded or count <= FOLD_LINES else count - FOLD_HEAD - FOLD_TAIL

    def build(self, width: int) -> list[Strip]:
        """The text, wrapped at ``width``, folded if long."""
        text = self.text
        hidden = self.hidden_lines
        if hidden:
            lines = text.split("\n", allow_blank=True)
            marker = Text(f"… {hidden:,} more lines ({EXPAND_KEY} to expand)", style="dim italic")
            text = Text("\n").join([*lines[:FOLD_HEAD], marker, *lines[-FOLD_TAIL:]])
        return render_strips(self.app.console, text, width)


class ToolPanel(Widget, can_focus=True):
    """One tool call: its title, its output (live while it runs), and how it ended."""

    DEFAULT_CSS = """
    ToolPanel {
        height: auto;
        margin: 1 0 0 0;
    }
    ToolPanel > .tool-title {
        color: $text;
    }
    ToolPanel.running > .tool-title {
        color: $text-muted;
    }
    ToolPanel.ok > .tool-title {
        color: $success;
    }
    ToolPanel.error > .tool-title {
        color: $error;
    }
    ToolPanel.error > FoldedText {
        color: $error;
    }
    ToolPanel:focus > .tool-title {
        background: $boost;
        text-style: bold;
    }
    """

    BINDINGS = [Binding("enter", "toggle", "Expand/fold", show=False)]

    def __init__(self, tool_use_id: str, name: str, args: dict[str, Any], view: CallView | None = None) -> None:
        super().__init__(classes="tool-call running")
        self.view = view
        """How the tool asked for the call to be shown (a Write's diff against the file); None: from the input."""
        self.tool_use_id = tool_use_id
        """The tool_use id this panel shows."""
        self.tool_name = name
        """The tool's name."""
        self.args = args
        """The call's input, as the model sent it."""
        self.output = ""
        """The output streamed so far."""
        self.started = clock()
        """When the call started (monotonic seconds)."""
        self.ending = ""
        """How it ended, once it has: ``exit 0 · 1.2 s``, ``Exit code 2 · 0.1 s``."""
        self.result: tuple[str, bool] | None = None
        """What the model saw and whether it was an error, once the call has ended."""
        self._title = Static(self._title_text("⏵"), classes="tool-title")
        self.body = FoldedText(self._input_text(), classes="tool-output")
        """The output, diff or checklist."""

    def compose(self) -> ComposeResult:
        yield self._title
        yield self.body

    def _title_text(self, mark: str) -> Text:
        text = Text(f"{mark} ")
        text.append(tool_title(self.tool_name, self.args), style="bold")
        description = self.args.get("description") if self.tool_name == "Bash" else None
        if isinstance(description, str) and description:
            text.append(f"  # {description}", style="italic")
        if self.ending:
            text.append(f"  {self.ending}", style="dim")
        return text

    def _input_text(self) -> Text:
        """What the call itself shows before any output: a diff, new content, a checklist."""
        args = self.args
        if self.view is not None and self.view.kind == "diff" and self.view.text:
            return unified_diff_text(self.view.text, headers=False)  # the file's name is the panel's title
        if (
            self.tool_name == "Edit"
            and isinstance(args.get("old_string"), str)
            and isinstance(args.get("new_string"), str)
        ):
            return diff_text(edit_diff(args["old_string"], args["new_string"]))
        if self.tool_name == "Write" and isinstance(args.get("content"), str):
            return diff_text(["+" + line for line in args["content"].splitlines()])
        if self.tool_name == "TodoWrite" and isinstance(args.get("todos"), list):
            return todo_text(args["todos"])
        return Text()

    @property
    def expanded(self) -> bool:
        """Whether the output is unfolded."""
        return self.body.expanded

    def action_toggle(self) -> None:
        """Fold or unfold the output."""
        self.body.expanded = not self.body.expanded

    def write_output(self, text: str) -> None:
        """Append live output."""
        self.output += text
        self.body.set_text(Text(self.output.rstrip("\n")))

    def runs_from_now(self) -> None:
        """The call was waiting for the user (a permission dialog): its duration counts from now."""
        self.started = clock()

    def finish(self, content: str, is_error: bool, *, timed: bool = True) -> None:
        """Show how the call ended; a call that streamed nothing shows what the model saw.

        ``timed``: show how long it took (not for calls replayed from the log).
        """
        seconds = clock() - self.started
        self.result = (content, is_error)
        self.remove_class("running")
        self.add_class("error" if is_error else "ok")
        ending = _ENDING.search(content) if self.tool_name == "Bash" else None
        status = ending.group(1) if ending else ("error" if is_error else "done")
        if self.tool_name == "Bash" and not is_error:
            status = "exit 0"
        self.ending = f"{status} · {seconds:.1f} s" if timed else status
        self._title.update(self._title_text("✗" if is_error else "✓"))
        if self.output:
            return  # the output is already shown; the model's copy adds only the ending, now in the title
        if self.body.text.plain and not is_error:
            return  # the diff or checklist says it all
        if self.tool_name == "Bash" and ending:
            content = content[: ending.start()]
        if self.tool_name in ("Read", "Glob", "Grep") and not is_error:
            count = content.count("\n") + 1
            self.body.set_text(Text(content))
            self.body.expanded = False
            if count > FOLD_LINES:
                return
        shown = Text(content) if not self.body.text.plain else Text("\n").join([self.body.text, Text(content)])
        self.body.set_text(shown)

    def rebuilder(self) -> Callable[[], ToolPanel]:
        """A panel equal to this one, built from its data alone (a pruned panel is built again on PageUp)."""
        tool_use_id, name, args, view = self.tool_use_id, self.tool_name, self.args, self.view
        output, result, ending, expanded = self.output, self.result, self.ending, self.body.expanded

        def build() -> ToolPanel:
            panel = ToolPanel(tool_use_id, name, args, view)
            if output:
                panel.write_output(output)
            if result is not None:
                panel.finish(*result, timed=False)
                panel.ending = ending
                panel.refresh_title()
            panel.body.expanded = expanded
            return panel

        return build

    def refresh_title(self) -> None:
        """Draw the title again (its mark and ending)."""
        mark = "⏵" if self.result is None else ("✗" if self.result[1] else "✓")
        self._title.update(self._title_text(mark))


class ThinkingBlock(FoldedText):
    """The model's visible thinking: one dim line until expanded."""

    DEFAULT_CSS = """
    ThinkingBlock {
        color: $text-muted;
        text-style: italic;
        margin: 1 0 0 0;
        padding: 0 1;
    }
    """

    def append(self, text: str) -> None:
        """Add a piece of thinking."""
        self.text.append(text)
        self.invalidate()

    def build(self, width: int) -> list[Strip]:
        """A one-line summary, or all of it when expanded."""
        if self.expanded:
            return render_strips(self.app.console, Text("∴ Thinking\n").append(self.text), width)
        words = len(self.text.plain.split())
        summary = Text(f"∴ Thinking ({words:,} words, {EXPAND_KEY} to expand)")
        return render_strips(self.app.console, summary, width)
