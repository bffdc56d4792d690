"""The prompt: a multi-line text area with history, collapsed pastes, completions and a queue.

``PromptBox`` stacks what belongs to the prompt: the prompts queued while the
agent works, the completion list (slash commands, ``@`` file paths) and the
``PromptArea`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import OptionList, Static, TextArea
from textual.widgets.option_list import Option

from tui.history import PromptHistory

PASTE_COLLAPSE_LINES = 10
"""A paste of at least this many lines is shown as one placeholder line."""

PASTE_COLLAPSE_CHARS = 1000
"""A paste longer than this is shown as one placeholder line, however many lines it has."""

_PLACEHOLDER = re.compile(r"\[Pasted text #(\d+), \d+ lines?\]")
_FILE_TOKEN = re.compile(r"(?:^|\s)@(\S*)$")
_COMMAND_TOKEN = re.compile(r"/[\w-]*")


@dataclass(frozen=True)
class Completion:
    """One suggestion: what replaces the word being completed, and a note beside it."""

    value: str
    """The replacement, e.g. ``/help`` or ``@src/main.py``."""
    description: str = ""
    """Shown dimmed beside the value."""


CommandSource = Callable[[str], list[Completion]]
"""Slash commands starting with a prefix (``/he`` → ``/help``)."""

FileSource = Callable[[str], Awaitable[list[Completion]]]
"""Workspace paths for a partial path after ``@`` (``src/ma`` → ``@src/main.py``)."""


def expand_pastes(text: str, pastes: dict[int, str]) -> str:
    """``text`` with each ``[Pasted text #N, K lines]`` replaced by the paste it stands for."""
    return _PLACEHOLDER.sub(lambda m: pastes.get(int(m.group(1)), m.group(0)), text)


class PromptArea(TextArea):
    """Multi-line prompt: Enter sends, Shift+Enter or Ctrl+J adds a line, Up/Down at the edges walk the history."""

    class Submitted(Message):
        """The user sent a prompt."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text
            """The prompt, pasted text expanded."""

    PLACEHOLDER = "Type a prompt · / commands · @ files"
    """Shown in the empty prompt once it takes input (a disabled prompt shows nothing)."""

    def __init__(self, *args, history: PromptHistory | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.disabled:
            self.placeholder = self.PLACEHOLDER
        self.prompt_history = history or PromptHistory(None)
        """The project's prompt history (``history`` is the undo history)."""
        self.pastes: dict[int, str] = {}
        """Collapsed pastes by number, expanded when the prompt is sent."""
        self.suggestions: Suggestions | None = None
        """The completion list this prompt drives (set by its ``PromptBox``)."""
        self._history_index: int | None = None
        self._draft = ""

    def watch_disabled(self, disabled: bool) -> None:
        """Say the prompt takes input (the placeholder) only while it does."""
        super().watch_disabled(disabled)
        self.placeholder = "" if disabled else self.PLACEHOLDER

    async def _on_key(self, event: events.Key) -> None:
        suggestions = self.suggestions
        if suggestions is not None and suggestions.display and suggestions.option_count:
            if event.key in ("up", "down"):
                self._stop(event)
                if event.key == "up":
                    suggestions.action_cursor_up()
                else:
                    suggestions.action_cursor_down()
                return
            if event.key in ("tab", "enter"):
                self._stop(event)
                self.accept_completion(send=event.key == "enter")
                return
            if event.key == "escape":
                self._stop(event)
                suggestions.hide()
                return
        if event.key == "enter":
            self._stop(event)
            self.submit()
            return
        if event.key in ("shift+enter", "ctrl+j"):
            self._stop(event)
            self.insert("\n")
            return
        if event.key == "up" and self.cursor_location[0] == 0 and self.prompt_history.entries:
            self._stop(event)
            self.walk_history(-1)
            return
        if event.key == "down" and self.cursor_location[0] == self.document.line_count - 1:
            if self._history_index is not None:
                self._stop(event)
                self.walk_history(+1)
                return
        await super()._on_key(event)

    @staticmethod
    def _stop(event: events.Key) -> None:
        event.prevent_default()
        event.stop()

    def submit(self) -> None:
        """Send the prompt (pasted text expanded) and remember it in the history."""
        text = expand_pastes(self.text, self.pastes)
        if not text.strip():
            return
        self.prompt_history.add(text)
        self._history_index = None
        self._draft = ""
        self.clear()
        if self.suggestions is not None:
            self.suggestions.hide()
        self.post_message(self.Submitted(text))

    def walk_history(self, step: int) -> None:
        """Show the previous (-1) or next (+1) prompt of the history; past the newest, the draft comes back."""
        entries = self.prompt_history.entries
        if self._history_index is None:
            if step > 0:
                return
            self._draft = self.text
            index = len(entries) - 1
        else:
            index = self._history_index + step
        if index < 0:
            return
        if index >= len(entries):
            self._history_index = None
            self.text = self._draft
            self.move_cursor(self.document.end)
            return
        self._history_index = index
        self.text = entries[index]
        # Going back, the cursor stays on the first line so Up goes on walking; going forward, on the last.
        self.move_cursor((0, 0) if step < 0 else self.document.end)

    async def _on_paste(self, event: events.Paste) -> None:
        text = event.text
        lines = text.count("\n") + (not text.endswith("\n"))
        if self.read_only or (lines < PASTE_COLLAPSE_LINES and len(text) <= PASTE_COLLAPSE_CHARS):
            return  # TextArea's own handler (Textual calls each class's in turn) inserts it
        event.prevent_default()
        event.stop()
        number = len(self.pastes) + 1
        self.pastes[number] = text
        self.insert(f"[Pasted text #{number}, {lines} line{'s' if lines != 1 else ''}]")
        self.focus()

    def completion_context(self) -> tuple[str, str] | None:
        """What is being completed at the cursor: ``("command", "/he")``, ``("file", "src/ma")``, or None."""
        row, column = self.cursor_location
        before = self.document[row][:column]
        if row == 0 and self.document.line_count == 1 and _COMMAND_TOKEN.fullmatch(self.text):
            return ("command", self.text)
        match = _FILE_TOKEN.search(before)
        if match:
            return ("file", match.group(1))
        return None

    def accept_completion(self, *, send: bool = False) -> None:
        """Put the highlighted suggestion in place of the word being completed; a command is sent with ``send``."""
        assert self.suggestions is not None
        picked = self.suggestions.picked()
        context = self.completion_context()
        self.suggestions.hide()
        if picked is None or context is None:
            return
        kind, word = context
        if kind == "command":
            self.text = picked.value
            self.move_cursor(self.document.end)
            if send:
                self.submit()
            return
        row, column = self.cursor_location
        start = (row, column - len(word) - 1)
        self.replace(picked.value + ("" if picked.value.endswith("/") else " "), start, (row, column))


class Suggestions(OptionList):
    """Completions for the word at the prompt's cursor; the prompt keeps the focus."""

    can_focus = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.completions: list[Completion] = []
        """What is offered, in order."""
        self.display = False

    def offer(self, completions: list[Completion]) -> None:
        """Show ``completions`` (none: hide)."""
        self.completions = completions
        self.clear_options()
        if not completions:
            self.display = False
            return
        width = max(len(c.value) for c in completions) + 2
        self.add_options([Option(Text.assemble(f"{c.value:<{width}}", (c.description, "dim"))) for c in completions])
        self.highlighted = 0
        self.display = True

    def picked(self) -> Completion | None:
        """The highlighted completion."""
        if self.highlighted is None or not self.completions:
            return None
        return self.completions[self.highlighted]

    def hide(self) -> None:
        """Hide the list until the next change of the prompt."""
        self.completions = []
        self.clear_options()
        self.display = False


class QueuedPrompts(Static):
    """Prompts sent while the agent works, waiting for the turn to end."""

    def show(self, prompts: list[str]) -> None:
        """Show ``prompts`` (none: hide)."""
        self.display = bool(prompts)
        lines = []
        for text in prompts:
            shown = text.strip().splitlines() or [""]
            more = len(shown) > 1 or len(shown[0]) > 100
            lines.append(f"⏳ queued: {shown[0][:100]}{'…' if more else ''}")
        self.update("\n".join(lines))


class PromptBox(Vertical):
    """The queue, the completion list and the prompt, stacked above the status bar."""

    DEFAULT_CSS = """
    PromptBox { height: auto; }
    PromptBox Suggestions { height: auto; max-height: 10; border: none; padding: 0 1; background: $surface; }
    PromptBox QueuedPrompts { color: $text-muted; padding: 0 1; }
    """

    def __init__(
        self,
        *,
        history: PromptHistory,
        commands: CommandSource,
        files: FileSource,
        disabled_prompt: bool = True,
    ) -> None:
        super().__init__(id="prompt-box")
        self._history = history
        self._commands = commands
        self._files = files
        self._disabled = disabled_prompt

    def compose(self) -> ComposeResult:
        """Queue, suggestions, prompt."""
        queued = QueuedPrompts(id="queued")
        queued.display = False
        yield queued
        suggestions = Suggestions(id="suggestions")
        yield suggestions
        area = PromptArea(
            id="prompt", soft_wrap=True, show_line_numbers=False, disabled=self._disabled, history=self._history
        )
        area.suggestions = suggestions
        yield area

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        """Offer completions for what was just typed."""
        self.refresh_completions()

    def on_text_area_selection_changed(self, event: TextArea.SelectionChanged) -> None:
        """Moving the cursor away from a completable word hides the list."""
        area = self.query_one("#prompt", PromptArea)
        if area.completion_context() is None:
            self.query_one("#suggestions", Suggestions).hide()

    @work(exclusive=True, group="completions", exit_on_error=False)
    async def refresh_completions(self) -> None:
        """Compute the completions of the word at the cursor (files: from the sandbox)."""
        area = self.query_one("#prompt", PromptArea)
        suggestions = self.query_one("#suggestions", Suggestions)
        context = area.completion_context()
        if context is None:
            suggestions.hide()
            return
        kind, word = context
        try:
            found = self._commands(word) if kind == "command" else await self._files(word)
        except Exception:  # noqa: BLE001 - a completion that fails offers nothing; typing goes on
            found = []
        if [c.value for c in found] == [word] or (kind == "file" and [c.value for c in found] == [f"@{word}"]):
            found = []  # the word is complete already
        if area.completion_context() == context:
            suggestions.offer(found)
