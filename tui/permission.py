"""The permission dialog: may this tool call run?"""

from __future__ import annotations

import json

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from agent.events import PermissionDecision, PermissionRequest


class PermissionScreen(ModalScreen[PermissionDecision]):
    """Asks the user to allow once, allow always, or deny (with an optional reason)."""

    DEFAULT_CSS = """
    PermissionScreen {
        align: center middle;
    }
    PermissionScreen > Vertical {
        width: 90%;
        max-width: 110;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    PermissionScreen .detail {
        max-height: 12;
        overflow-y: auto;
        background: $panel;
        padding: 0 1;
        margin: 1 0;
    }
    PermissionScreen Horizontal {
        height: auto;
    }
    PermissionScreen Button {
        margin-right: 1;
    }
    """
    BINDINGS = [
        Binding("y", "allow", "Allow once"),
        Binding("a", "always", "Allow always"),
        Binding("n,escape", "deny", "Deny"),
    ]

    def __init__(self, request: PermissionRequest) -> None:
        super().__init__()
        self.request = request
        """The question being asked."""

    def compose(self) -> ComposeResult:
        args = self.request.input
        detail = args.get("command") if self.request.name == "Bash" else json.dumps(args, indent=2, ensure_ascii=False)
        with Vertical():
            yield Label(f"Allow [b]{self.request.name}[/b] to run in the sandbox?")
            yield Static(str(detail), classes="detail", markup=False)
            yield Input(placeholder="Reason, if you deny (the model sees it)", id="reason")
            with Horizontal():
                yield Button("Allow once (y)", id="allow", variant="success")
                yield Button("Allow always (a)", id="always", variant="primary")
                yield Button("Deny (n)", id="deny", variant="error")

    def on_mount(self) -> None:
        self.query_one("#allow", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the pressed button."""
        {"allow": self.action_allow, "always": self.action_always, "deny": self.action_deny}[
            event.button.id or "deny"
        ]()

    def action_allow(self) -> None:
        """Allow this call."""
        self.dismiss(PermissionDecision(allow=True))

    def action_always(self) -> None:
        """Allow this call and remember the rule for the project."""
        self.dismiss(PermissionDecision(allow=True, always=True))

    def action_deny(self) -> None:
        """Deny, with the typed reason if any."""
        self.dismiss(PermissionDecision(allow=False, reason=self.query_one("#reason", Input).value.strip()))
