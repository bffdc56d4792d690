"""The rewind dialog: pick an earlier prompt, then what to take back (conversation, code, or both)."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from agent.workspace.changes import Prompt


@dataclass
class RewindChoice:
    """What the user picked: the prompt to go back to, and what to take back."""

    number: int
    """Rewind to just before this prompt."""
    choice: str
    """``both``, ``conversation`` or ``code``."""


class RewindScreen(ModalScreen[RewindChoice | None]):
    """Lists the session's prompts, newest first; Enter picks one, then a second list picks what to rewind."""

    DEFAULT_CSS = """
    RewindScreen { align: center middle; }
    RewindScreen > Vertical { width: 90%; max-width: 110; height: auto; max-height: 80%;
        border: thick $accent; background: $surface; padding: 1 2; }
    RewindScreen OptionList { height: auto; max-height: 20; }
    RewindScreen #rewind-changes { color: $text-muted; margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    CHOICES = (
        ("both", "Conversation and code"),
        ("conversation", "Conversation only (keep the files)"),
        ("code", "Code only (keep the conversation)"),
    )
    """The second step's options."""

    def __init__(self, prompts: list[Prompt], describe_changes) -> None:
        """Offer ``prompts``; ``describe_changes(number, choice)`` returns the lines listing what would change."""
        super().__init__()
        self.prompts = prompts
        """The live conversation's prompts, oldest first."""
        self.describe_changes = describe_changes
        """Callable giving the file changes a choice would make, for the confirmation step."""
        self._picked: int | None = None

    def compose(self) -> ComposeResult:
        """A title, the prompt list, and the file changes of the highlighted choice."""
        with Vertical():
            yield Label("Rewind to before which prompt? (Enter to pick, Esc to cancel)", id="rewind-title")
            yield OptionList(
                *[Option(f"{p.number:3}. {p.text or '(empty)'}", id=str(p.number)) for p in reversed(self.prompts)],
                id="rewind-list",
            )
            yield Static("", id="rewind-changes")

    def on_mount(self) -> None:
        """Focus the list."""
        self.query_one("#rewind-list", OptionList).focus()

    @on(OptionList.OptionSelected, "#rewind-list")
    async def _selected(self, event: OptionList.OptionSelected) -> None:
        option_id = event.option.id or ""
        if self._picked is None:
            self._picked = int(option_id)
            options = self.query_one("#rewind-list", OptionList)
            options.clear_options()
            options.add_options([Option(label, id=key) for key, label in self.CHOICES])
            options.highlighted = 0
            self.query_one("#rewind-title", Label).update(f"Rewind to before prompt {self._picked}: what to take back?")
            await self._show_changes("both")
        else:
            self.dismiss(RewindChoice(self._picked, option_id))

    @on(OptionList.OptionHighlighted, "#rewind-list")
    async def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self._picked is not None and event.option.id:
            await self._show_changes(event.option.id)

    async def _show_changes(self, choice: str) -> None:
        assert self._picked is not None
        lines = await self.describe_changes(self._picked, choice)
        text = "\n".join(lines[:15]) + (f"\n… and {len(lines) - 15} more" if len(lines) > 15 else "")
        self.query_one("#rewind-changes", Static).update(text or "No files change.")

    def action_dismiss_none(self) -> None:
        """Close without rewinding."""
        self.dismiss(None)
