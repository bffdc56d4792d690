"""Screenshots (SVGs under tests/__snapshots__/) of the session picker, slash-command completion, and the
main screen in a light theme. Ids, timestamps, the clock and the home directory are fixed, so they are stable.

Update after a deliberate change of the looks: pytest tests/test_tui_screen_snapshots.py --snapshot-update,
then look at the SVGs.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.geometry import Offset
from textual.selection import Selection

import tui
from agent import events as ev
from session import log as session_log
from session.store import SessionStore
from tests.fixtures.transcript_screen import STATUS, TranscriptScreenApp, tool_call, user
from tests.test_permission_snapshots import CALLS, DialogApp
from tui import picker, tool_panels
from tui.commands import COMMANDS
from tui.history import PromptHistory
from tui.picker import SessionPickerScreen
from tui.prompt import Completion, PromptBox
from tui.status import SessionStatus, StatusLine
from tui.streaming_markdown import MarkdownView
from tui.transcript import Transcript
from tui.widgets import ErrorMessage, Notice, StatusBar

SIZES = [(120, 34), (80, 24)]
NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
"""The picker's clock: session ages are counted from here."""


@pytest.fixture(autouse=True)
def fixed_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The home directory, the picker's clock and tool durations do not change between runs."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(picker, "clock", lambda: NOW)
    ticks = itertools.count()
    monkeypatch.setattr(tool_panels, "clock", lambda: next(ticks) * 1.5)


SESSIONS = [
    # (minutes ago, first prompt, answer)
    (3 * 24 * 60, "Why does the parser choke on nested lists?", "The tokenizer drops the indent of the second level."),
    (5 * 60, "Add a --dry-run flag to the deploy script", "Added `--dry-run`: it prints the commands instead."),
    (
        12,
        "fix the flaky test in test_sync.py",
        "The test slept 0.1 s and raced the watcher; it now waits on the event.",
    ),
]


def make_sessions(home: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> SessionStore:
    """The three SESSIONS in ``project``, with ids and timestamps fixed (ids 00000000-…-000000000001 on)."""
    numbers = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(numbers)))
    store = SessionStore(home)
    for minutes, prompt, answer in SESSIONS:
        stamp = (NOW.timestamp() - minutes * 60) * 1000
        when = datetime.fromtimestamp(stamp / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        monkeypatch.setattr(session_log, "utc_timestamp", lambda when=when: when)
        log = store.create(project, cwd=project)
        log.append("user", {"content": prompt})
        message = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        log.append("assistant", {"message": message, "model": "claude-sonnet-4-5"})
        log.close()
    monkeypatch.undo()  # uuid4 and the log's clock are themselves again; HOME and the picker's clock are set again
    return store


class PickerApp(App[None]):
    """The session picker over the main screen's styles."""

    CSS_PATH = str(Path(tui.__file__).parent / "tether.tcss")

    def __init__(self, project: Path, store: SessionStore) -> None:
        super().__init__()
        self.project = project
        self.store = store

    def on_mount(self) -> None:
        self.push_screen(SessionPickerScreen(self.project, self.store))


@pytest.mark.parametrize("size", SIZES)
def test_session_picker(snap_compare, size: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    store = make_sessions(tmp_path / "tether-home", project, monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(picker, "clock", lambda: NOW)
    app = PickerApp(project, store)

    async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
        screen = app.screen
        assert isinstance(screen, SessionPickerScreen)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert [s.first_prompt for s in screen.shown] == [s[1] for s in reversed(SESSIONS)]
        await screen.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=settle)


class CompletionApp(TranscriptScreenApp):
    """The main screen with the real prompt box (queue, completions, prompt)."""

    def compose(self) -> ComposeResult:
        yield Transcript(id="transcript")
        yield PromptBox(
            history=PromptHistory(None), commands=COMMANDS.complete, files=self.no_files, disabled_prompt=False
        )
        yield StatusBar(STATUS, id="status")

    async def no_files(self, partial: str) -> list[Completion]:
        """No workspace here."""
        return []


@pytest.mark.parametrize("size", SIZES)
def test_slash_command_completion(snap_compare, size: tuple[int, int]) -> None:
    async def scenario(transcript: Transcript) -> None:
        await user(transcript, "what changed since yesterday?")
        await transcript.show(ev.TextDelta("Two commits: the parser fix and the new `--dry-run` flag."))
        await transcript.end_answer()

    app = CompletionApp(scenario)

    async def type_slash(pilot) -> None:  # type: ignore[no-untyped-def]
        await app.play(pilot)
        await pilot.press("/", "c")
        await pilot.pause()
        assert app.query_one("#suggestions").display

    assert snap_compare(app, terminal_size=size, run_before=type_slash)


async def everything(transcript: Transcript) -> None:
    """One of each kind of entry: prompt, answer with code, tool panels (ok, error, diff, checklist), notices."""
    await user(transcript, "rename the helper and run the tests")
    answer = (
        "I'll **rename** it, then run `pytest`:\n\n```python\ndef increment(x):\n    return x + 1\n```\n\n> a quote\n"
    )
    await transcript.show(ev.TextDelta(answer))
    await transcript.end_answer()
    old, new = "def helper(x):\n    return x + 1\n", "def increment(x):\n    return x + 1\n"
    args = {"file_path": "/workspace/app.py", "old_string": old, "new_string": new}
    await tool_call(transcript, "t1", "Edit", args, None, "The file /workspace/app.py has been updated.")
    await tool_call(
        transcript, "t2", "Bash", {"command": "pytest -q", "description": "Run the tests"}, "3 passed\n", "3 passed"
    )
    await tool_call(
        transcript, "t3", "Bash", {"command": "ruff check"}, "E501 line too long\n", "E501\nExit code 1", True
    )
    todos = [
        {"content": "Rename the helper", "status": "completed", "activeForm": "Renaming"},
        {"content": "Run the tests", "status": "in_progress", "activeForm": "Running"},
        {"content": "Update the docs", "status": "pending", "activeForm": "Updating"},
    ]
    await tool_call(transcript, "t4", "TodoWrite", {"todos": todos}, None, "Todos updated.")
    await transcript.add(Notice("Sandbox lost (container removed) — restored checkpoint 3 (12 files) in 0.4 s."))
    await transcript.add(ErrorMessage("The embedded sandbox host stopped answering."))


class LightApp(TranscriptScreenApp):
    """The main screen in Textual's light theme."""

    def on_mount(self) -> None:
        self.theme = "textual-light"
        super().on_mount()


@pytest.mark.parametrize("size", SIZES)
def test_main_screen_in_a_light_theme(snap_compare, size: tuple[int, int]) -> None:
    app = LightApp(everything)
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: app.play(pilot))


def test_main_screen_in_the_dark_theme(snap_compare) -> None:
    app = TranscriptScreenApp(everything)
    assert snap_compare(app, terminal_size=(120, 34), run_before=lambda pilot: app.play(pilot))


class StatusStatesApp(App[None]):
    """One real status bar per sandbox state, and one with the spinner, in the theme given."""

    CSS = "StatusLine { margin-bottom: 1; }"

    def __init__(self, theme: str) -> None:
        super().__init__()
        self.theme_name = theme

    def compose(self) -> ComposeResult:
        for state in ("starting", "ready", "lost", "restoring", "unreachable"):
            status = SessionStatus(
                model="claude-sonnet-4-5", tokens=12_345, cost=0.0421, workspace_mode="copy", sandbox_state=state
            )
            status.rtt_ms = 3.0 if state == "ready" else None
            yield StatusLine(status, classes=state)

    def on_mount(self) -> None:
        self.theme = self.theme_name


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_sandbox_states_in_the_status_bar(snap_compare, theme: str) -> None:
    app = StatusStatesApp(theme)

    async def spin(pilot) -> None:  # type: ignore[no-untyped-def]
        line = app.query_one(".ready", StatusLine)
        line.set_thinking(True)
        line._timer.pause()  # a fixed frame of the spinner
        line.refresh_status()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 12), run_before=spin)


class LightDialogApp(DialogApp):
    """The permission dialog over a light theme."""

    def on_mount(self) -> None:
        self.theme = "textual-light"
        super().on_mount()


@pytest.mark.parametrize("call", ["bash", "edit"])
def test_permission_dialog_in_a_light_theme(snap_compare, call: str) -> None:
    assert snap_compare(LightDialogApp(*CALLS[call]), terminal_size=(120, 34))


def test_a_text_selection_in_an_answer(snap_compare) -> None:
    async def scenario(transcript: Transcript) -> None:
        await user(transcript, "hello")
        answer = "Some text with `inline code` and **bold** words that go on.\n\nSecond paragraph here."
        await transcript.show(ev.TextDelta(answer))
        await transcript.end_answer()

    app = TranscriptScreenApp(scenario)

    async def select(pilot) -> None:  # type: ignore[no-untyped-def]
        await app.play(pilot)
        answer = app.query_one(MarkdownView)
        app.screen.selections = {answer: Selection(Offset(5, 0), Offset(30, 2))}
        await pilot.pause()
        assert (
            app.screen.get_selected_text()
            == "text with inline code and bold words that go on.\n\nSecond paragraph here."
        )

    assert snap_compare(app, terminal_size=(80, 24), run_before=select)
