"""The status bar: model, context used, tokens and cost, permission mode, workspace, sandbox host and state.

It only listens: ``SessionStatus.apply`` takes the harness's events, the bar draws what it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from session.events import Event, EventType

if TYPE_CHECKING:
    from agent import events as ev

CONTEXT_WINDOW = 200_000
"""Tokens of context the Claude models take (the percentage shown is of this)."""

MODE_NAMES = {
    "default": "ask before edits",
    "acceptEdits": "⏵⏵ accept edits",
    "plan": "⏸ plan mode",
    "bypassPermissions": "bypass permissions",
}
"""How each permission mode reads in the bar."""

STATE_STYLES = {
    "starting": "black on yellow",
    "restoring": "black on yellow",
    "ready": "green",
    "lost": "bold white on red",
    "unreachable": "bold white on red",
    "unavailable": "bold white on red",
}
"""How each sandbox state reads in the bar. States that need attention are badges: yellow or red text
alone is hard to read on a light theme's panel; dark text on yellow and white on red read on both."""

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@dataclass
class SessionStatus:
    """What the status bar shows, kept up to date from the harness's events."""

    model: str
    cost: float | None = 0.0
    """The session's cost in USD; None once a price was unknown."""
    tokens: int = 0
    """Tokens used by the session (input, output and cache)."""
    context_tokens: int = 0
    """The context the last response used (its input, cache and output tokens)."""
    permission_mode: str = "default"
    workspace_mode: str = ""
    host: str = "embedded"
    sandbox_state: str = "starting"
    rtt_ms: float | None = None
    """The last round trip to the sandbox host."""

    def apply(self, event: ev.AgentEvent) -> bool:
        """Take one event into account; True if the bar changed."""
        from agent import events as ev  # imported with the harness, before any event: not on the first screen's path

        if isinstance(event, ev.UsageUpdate):
            used = (
                event.input_tokens
                + event.output_tokens
                + event.cache_read_input_tokens
                + event.cache_creation_input_tokens
            )
            self.tokens += used
            self.context_tokens = used
            self.cost = event.session_cost_usd
            return True
        if isinstance(event, ev.SandboxState):
            self.sandbox_state = event.state
            self.host = event.host
            if event.rtt_ms is not None:
                self.rtt_ms = event.rtt_ms
            return True
        if isinstance(event, ev.PermissionModeChanged):
            self.permission_mode = event.mode
            return True
        return False

    @property
    def context_percent(self) -> int:
        """Context used, in percent of the model's window."""
        return round(100 * self.context_tokens / CONTEXT_WINDOW)

    def render(self, width: int = 200) -> Text:
        """The bar's line, fitted to ``width`` cells: fewer words, shorter numbers, fewer parts; the state stays."""
        steps = [
            {"labels": False},
            {"labels": False, "wide": False},
            {"labels": False, "wide": False, "workspace": False},
            {"labels": False, "wide": False, "workspace": False, "context": False},
        ]
        line = self._line()
        for step in steps:
            if line.cell_len <= width:
                break
            line = self._line(**step)
        return line

    def _line(self, *, wide: bool = True, labels: bool = True, context: bool = True, workspace: bool = True) -> Text:
        cost = "cost unknown" if self.cost is None else f"${self.cost:.4f}"
        tokens = f"{self.tokens:,} tokens" if wide else f"{_short(self.tokens)} tok"
        mode = MODE_NAMES.get(self.permission_mode, self.permission_mode)
        parts: list[Text | str] = [self.model if wide else self.model.removeprefix("claude-")]
        if context:
            parts.append(f"ctx {self.context_percent}%")
        parts.append(f"{tokens} {cost}" if not wide else f"{tokens} · {cost}")
        parts.append(Text(mode, style="bold" if self.permission_mode != "default" else ""))
        if self.workspace_mode and workspace:
            parts.append(f"workspace {self.workspace_mode}" if labels else self.workspace_mode)
        state = Text(self.sandbox_state, style=STATE_STYLES.get(self.sandbox_state, ""))
        rtt = f" {self.rtt_ms:.0f} ms" if self.rtt_ms is not None and self.sandbox_state == "ready" else ""
        parts.append(Text.assemble(f"sandbox {self.host}: " if labels else f"{self.host}: ", state, rtt))
        return Text(" · ").join(Text(p) if isinstance(p, str) else p for p in parts)


def context_tokens_of(events: Iterable[Event]) -> int:
    """The context the newest answer of ``events`` used (its input, cache and output tokens); 0: no answer."""
    for event in reversed(list(events)):
        if event.type != EventType.ASSISTANT:
            continue
        message = event.payload.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict):
            return sum(
                value
                for key, value in usage.items()
                if key.endswith("tokens") and isinstance(value, int) and not isinstance(value, bool)
            )
    return 0


def _short(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


class StatusLine(Static):
    """The status bar at the bottom of the screen, with a spinner while the model thinks."""

    DEFAULT_CSS = """
    StatusLine {
        height: 1;
        background: $panel;
        color: $text-muted;
        padding: 0 1;
    }
    """

    def __init__(self, status: SessionStatus, **kwargs) -> None:
        super().__init__(**kwargs)
        self.status = status
        """What the bar shows."""
        self.thinking = False
        """Whether the model is working (a spinner turns before the line)."""
        self._frame = 0
        self._timer = None

    def on_mount(self) -> None:
        self.refresh_status()

    def on_resize(self) -> None:
        self.refresh_status()

    def set_thinking(self, thinking: bool) -> None:
        """Start or stop the spinner."""
        if thinking == self.thinking:
            return
        self.thinking = thinking
        if thinking:
            self._timer = self.set_interval(0.1, self._spin)
        elif self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.refresh_status()

    def _spin(self) -> None:
        self._frame = (self._frame + 1) % len(SPINNER)
        self.refresh_status()

    def refresh_status(self) -> None:
        """Redraw from ``status``."""
        spinner = Text(SPINNER[self._frame] + " thinking… ", "bold") if self.thinking else Text()
        width = self.content_size.width or 200
        line = Text.assemble(spinner, self.status.render(width - spinner.cell_len))
        self.update(line)
