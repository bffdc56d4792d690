"""The plan dialog: the model presents its plan (ExitPlanMode); approve it and pick the mode to go on in, or keep planning."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown

from agent.events import PlanApprovalRequest, PlanDecision


class PlanScreen(ModalScreen[PlanDecision]):
    """Shows the plan; 1 approves and accepts edits, 2 approves and asks before edits, n or Esc keeps planning."""

    DEFAULT_CSS = """
    PlanScreen {
        align: center middle;
    }
    PlanScreen > Vertical {
        width: 90%;
        max-width: 110;
        height: auto;
        max-height: 100%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    PlanScreen VerticalScroll {
        height: auto;
        max-height: 16;
        background: $panel;
        margin: 1 0;
    }
    PlanScreen Horizontal {
        height: auto;
    }
    PlanScreen Button {
        margin-right: 1;
    }
    """
    BINDINGS = [
        Binding("1", "approve('acceptEdits')", "Approve, accept edits"),
        Binding("2", "approve('default')", "Approve, ask before edits"),
        Binding("n", "keep_planning", "Keep planning"),
        Binding("escape", "cancel", "Keep planning", priority=True),
    ]

    def __init__(self, request: PlanApprovalRequest) -> None:
        super().__init__()
        self.request = request
        """The plan being presented."""

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Ready to code?[/b] Here is the plan:")
            with VerticalScroll():
                yield Markdown(self.request.plan)
            yield Input(placeholder="What to change, to keep planning (Enter sends it)", id="feedback")
            with Horizontal():
                yield Button("Yes, accept edits (1)", id="accept", variant="success")
                yield Button("Yes, ask before edits (2)", id="ask", variant="primary")
                yield Button("No, keep planning (n)", id="keep", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#accept", Button).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """1, 2 and n answer only while the feedback field does not have the keyboard."""
        return not (action in ("approve", "keep_planning") and isinstance(self.focused, Input))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the pressed button."""
        if event.button.id == "accept":
            self.action_approve("acceptEdits")
        elif event.button.id == "ask":
            self.action_approve("default")
        else:
            self.action_keep_planning()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the feedback field keeps planning with it."""
        event.stop()
        self.action_keep_planning()

    def action_approve(self, mode: str) -> None:
        """Approve the plan and go on in ``mode``."""
        self.dismiss(PlanDecision(approve=True, mode=mode))

    def action_cancel(self) -> None:
        """Esc: keep planning."""
        self.action_keep_planning()

    def action_keep_planning(self) -> None:
        """Keep planning, with the typed feedback if any."""
        self.dismiss(PlanDecision(approve=False, feedback=self.query_one("#feedback", Input).value.strip()))
