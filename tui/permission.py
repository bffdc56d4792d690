"""The permission dialog: may this tool call run? Keyboard first: y allows once, a always, n or Esc denies."""

from __future__ import annotations

import json

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from agent.events import PermissionDecision, PermissionRequest
from agent.permissions import Rule, SettingsError
from agent.tools.views import CallView
from tui.tool_panels import unified_diff_text


def call_detail(name: str, args: dict, view: CallView | None) -> Static:
    """The call as the tool shows it: a command with its description, a coloured diff, or its input."""
    if view is not None and view.kind == "diff":
        # Plain ANSI colours, no background: Syntax's "ansi_dark" draws bright colours on a white box in a light theme.
        diff = unified_diff_text(view.text, headers=False) if view.text.strip() else Text("(no change)")
        return Static(diff, classes="detail diff")
    if view is not None and view.kind == "command":
        text = Text(view.text, style="bold")
        if view.description:
            text = Text.assemble((view.description, "italic"), "\n", text)
        return Static(text, classes="detail command")
    if view is not None and view.text:
        return Static(Text(view.text), classes="detail")
    return Static(Text(json.dumps(args, indent=2, ensure_ascii=False)), classes="detail")


class PermissionScreen(ModalScreen[PermissionDecision]):
    """Asks the user to allow once, allow always (saving an editable rule), or deny (with an optional reason)."""

    DEFAULT_CSS = """
    PermissionScreen {
        align: center middle;
    }
    PermissionScreen > Vertical {
        width: 90%;
        max-width: 110;
        height: auto;
        max-height: 100%;
        border: thick $warning;
        background: $surface;
        padding: 0 1;
    }
    PermissionScreen .title {
        text-style: bold;
    }
    PermissionScreen VerticalScroll {
        height: auto;
        max-height: 14;
        background: $panel;
        margin: 1 0;
    }
    PermissionScreen .detail {
        padding: 0 1;
    }
    PermissionScreen .field {
        height: auto;
    }
    PermissionScreen .field Label {
        width: 13;
    }
    PermissionScreen .field Input {
        width: 1fr;
    }
    PermissionScreen #rule-error {
        color: $error;
        height: auto;
        display: none;
    }
    PermissionScreen #rule-error.shown {
        display: block;
    }
    PermissionScreen .buttons {
        height: auto;
        margin: 1 0 0 0;
    }
    PermissionScreen Button {
        margin-right: 1;
        min-width: 10;
    }
    """
    BINDINGS = [
        Binding("y", "allow", "Allow once"),
        Binding("a", "always", "Allow always"),
        Binding("n", "deny", "Deny"),
        Binding("escape", "cancel", "Deny", priority=True),
    ]

    def __init__(self, request: PermissionRequest) -> None:
        super().__init__()
        self.request = request
        """The question being asked."""

    def compose(self) -> ComposeResult:
        request = self.request
        title = request.view.title if request.view is not None else request.name
        with Vertical():
            yield Label(Text.assemble("Allow ", (request.name, "bold"), " to run in the sandbox?"), classes="title")
            with VerticalScroll():
                yield call_detail(request.name, request.input, request.view)
            if request.view is not None and request.view.kind != "command":
                yield Label(Text(title, style="dim"), classes="subject")
            with Horizontal(classes="field"):
                yield Label("Always rule")
                yield Input(request.suggested_rule or request.name, id="rule", compact=True)
            yield Static("", id="rule-error")
            with Horizontal(classes="field"):
                yield Label("Deny reason")
                yield Input(placeholder="optional; the model reads it (Enter denies)", id="reason", compact=True)
            with Horizontal(classes="buttons"):
                yield Button("Allow once (y)", id="allow", variant="success", compact=True)
                yield Button("Allow always (a)", id="always", variant="primary", compact=True)
                yield Button("Deny (n, Esc)", id="deny", variant="error", compact=True)

    def on_mount(self) -> None:
        self.query_one("#allow", Button).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """y, a and n answer only while no text field has the keyboard (there they are typed)."""
        return not (action in ("allow", "always", "deny") and isinstance(self.focused, Input))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the pressed button."""
        {"allow": self.action_allow, "always": self.action_always, "deny": self.action_deny}[
            event.button.id or "deny"
        ]()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the reason field denies with it; Enter in the rule field allows always with that rule."""
        event.stop()
        if event.input.id == "reason":
            self.action_deny()
        else:
            self.action_always()

    def action_allow(self) -> None:
        """Allow this call."""
        self.dismiss(PermissionDecision(allow=True))

    def action_always(self) -> None:
        """Allow this call and save the rule (as edited) for the project."""
        text = self.query_one("#rule", Input).value.strip()
        try:
            rule = Rule.parse(text)
        except SettingsError as exc:
            error = self.query_one("#rule-error", Static)
            error.update(str(exc))
            error.add_class("shown")
            self.query_one("#rule", Input).focus()
            return
        self.dismiss(PermissionDecision(allow=True, always=True, rule=str(rule)))

    def action_cancel(self) -> None:
        """Esc: deny, wherever the keyboard is."""
        self.action_deny()

    def action_deny(self) -> None:
        """Deny, with the typed reason if any: the turn stops and the prompt is the user's again."""
        reason = self.query_one("#reason", Input).value.strip()
        self.dismiss(PermissionDecision(allow=False, reason=reason, ends_turn=True))
