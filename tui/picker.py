"""The session picker: this project's sessions newest first, full-text search, a preview; Enter resumes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from session.errors import SessionStoreError
from session.index import SessionSummary
from session.store import SessionStore
from session.transcript import render_markdown

PREVIEW_CHARS = 3000
"""How much of the selected session's transcript the preview shows."""


def clock() -> datetime:
    """Now, in UTC: what ages are counted from (a test may stop it)."""
    return datetime.now(UTC)


def shown_path(path: Path) -> str:
    """``path`` as the user reads it: under the home directory, written from ``~``."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except (ValueError, RuntimeError):  # not under home, or no home at all
        return str(path)


def age(timestamp: str, now: datetime | None = None) -> str:
    """How long ago an ISO-8601 UTC ``timestamp`` was, in the largest unit: ``5m``, ``3h``, ``2d``."""
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int(((now or clock()) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class SessionPickerScreen(Screen[str | None]):
    """Pick a session to resume: type to search, Enter resumes, Ctrl+A toggles all projects, Esc cancels."""

    DEFAULT_CSS = """
    SessionPickerScreen { layout: vertical; }
    SessionPickerScreen #picker-title { padding: 0 1; color: $text-muted; }
    SessionPickerScreen #picker-search { margin: 0 1; }
    SessionPickerScreen #picker-body { height: 1fr; }
    SessionPickerScreen #picker-list { width: 3fr; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    SessionPickerScreen #picker-preview { width: 2fr; height: 1fr; padding: 0 1; background: $surface;
        color: $text-muted; overflow-y: auto; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+a", "toggle_projects", "All projects", priority=True),  # before the search box's Home
        Binding("down", "cursor_down", show=False),
        Binding("up", "cursor_up", show=False),
    ]

    def __init__(self, project_dir: Path, store: SessionStore | None = None) -> None:
        super().__init__()
        self.project_dir = project_dir
        """The project whose sessions are listed (unless all projects are shown)."""
        self.store = store or SessionStore()
        """Where the sessions are listed and searched."""
        self.all_projects = False
        """Every project's sessions, not only this one's."""
        self.shown: list[SessionSummary] = []
        """The sessions listed, in order."""

    def compose(self) -> ComposeResult:
        """Title, search box, the list beside the preview."""
        yield Label("", id="picker-title")
        yield Input(placeholder="search the sessions (full text)", id="picker-search")
        with Horizontal(id="picker-body"):
            yield OptionList(id="picker-list")
            with Vertical(id="picker-preview"):
                yield Static("", id="picker-preview-text")

    def on_mount(self) -> None:
        """List the sessions and focus the search box."""
        self.query_one("#picker-search", Input).focus()
        self.reload()

    def _title(self) -> str:
        where = "all projects" if self.all_projects else shown_path(self.project_dir)
        return f"Resume a session — {where}  (Enter resume · Ctrl+A {'this project' if self.all_projects else 'all projects'} · Esc cancel)"

    @on(Input.Changed, "#picker-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.reload()

    @work(exclusive=True, group="picker", exit_on_error=False)
    async def reload(self) -> None:
        """List the sessions matching the search (all of them when it is empty), newest first."""
        query = self.query_one("#picker-search", Input).value.strip()
        project = None if self.all_projects else self.project_dir
        try:
            if query:
                hits = self.store.search(query, project)
                by_id = {s.session_id: s for s in self.store.list(project)}
                found = [by_id[h.session_id] for h in hits if h.session_id in by_id]
            else:
                found = self.store.list(project)
        except SessionStoreError as exc:
            self.query_one("#picker-preview-text", Static).update(f"The session index failed: {exc}")
            found = []
        self.query_one("#picker-title", Label).update(self._title())
        found = [s for s in found if s.message_count]  # a session without a prompt has nothing to resume
        self.shown = found
        options = self.query_one("#picker-list", OptionList)
        options.clear_options()
        options.add_options([Option(self._row(s), id=s.session_id) for s in found])
        if found:
            options.highlighted = 0
        else:
            self.query_one("#picker-preview-text", Static).update(
                "No session matches." if query else "No session yet in this project."
            )

    def _row(self, summary: SessionSummary) -> Text:
        # Fixed columns first, the title last: a narrow screen cuts the title, never the columns.
        row = Text()
        row.append(f"{age(summary.updated):>4}  {summary.message_count:>4} msgs  ", "dim")
        if self.all_projects:
            row.append(f"{summary.project_dir.name}  ", "italic dim")
        row.append(summary.title or "(untitled)", "bold")
        first = " ".join(summary.first_prompt.split())
        if first and first != summary.title:
            row.append(f"\n{'':16}{first[:200]}", "dim")
        return row

    @on(OptionList.OptionHighlighted, "#picker-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.preview(event.option.id or "")

    @work(exclusive=True, group="preview", exit_on_error=False)
    async def preview(self, session_id: str) -> None:
        """Show the start of the session's conversation beside the list."""
        summary = next((s for s in self.shown if s.session_id == session_id), None)
        if summary is None:
            return
        try:
            log = self.store.open(summary.session_id)
            try:
                text = render_markdown(log.live_path())
            finally:
                log.close()
        except SessionStoreError as exc:
            text = f"Cannot read this session: {exc}"
        from tui.streaming_markdown import BlockMarkdown

        head = Text(f"{summary.session_id}\n{shown_path(summary.project_dir)}\n", style="dim")
        # As the transcript draws it; code plain, so moving through the list never waits for a lexer.
        body = BlockMarkdown(text[:PREVIEW_CHARS], highlight_code=False)
        self.query_one("#picker-preview-text", Static).update(Group(head, body))

    @on(OptionList.OptionSelected, "#picker-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    @on(Input.Submitted, "#picker-search")
    def _submitted(self, event: Input.Submitted) -> None:
        options = self.query_one("#picker-list", OptionList)
        if options.highlighted is not None and self.shown:
            self.dismiss(self.shown[options.highlighted].session_id)

    def action_cursor_down(self) -> None:
        """Next session (the search box keeps the focus)."""
        self.query_one("#picker-list", OptionList).action_cursor_down()

    def action_cursor_up(self) -> None:
        """Previous session."""
        self.query_one("#picker-list", OptionList).action_cursor_up()

    def action_toggle_projects(self) -> None:
        """Between this project's sessions and every project's."""
        self.all_projects = not self.all_projects
        self.reload()

    def action_cancel(self) -> None:
        """Leave without resuming."""
        self.dismiss(None)
