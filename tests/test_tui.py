"""The TUI driven by Textual's Pilot: real harness, embedded sandbox host, fake Messages API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual import events
from textual.message import Message

from agent.harness import HarnessOptions
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tui import screen_text, type_prompt
from tui.app import TetherApp
from tui.permission import PermissionScreen
from tui.tool_panels import ToolPanel
from tui.widgets import PromptArea


async def test_prompt_streams_answer_and_shows_tool_output(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(
        reply(text("Let me run it."), tool_use("Bash", {"command": "echo tool-output-xyz; echo second line"})),
        reply(text("All **done** here, the tool said tool-output-xyz.")),
    )
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_prompt(pilot, app, "run it")
        await app.workers.wait_for_complete()
        await pilot.pause()

        panel = app.query_one(ToolPanel)
        assert "tool-output-xyz" in panel.output
        assert panel.has_class("ok")
        answers = [m.source for m in app.query("MarkdownView.assistant")]
        assert answers == ["Let me run it.", "All **done** here, the tool said tool-output-xyz."]
        screen = screen_text(app)
        assert "tool-output-xyz" in screen
        assert "here, the tool said" in screen
        assert "run it" in screen
        assert not app.query_one("#prompt", PromptArea).disabled
        await app.action_quit()
    sent = fake_api.message_requests[0].body["messages"]
    assert sent[0]["content"][0]["text"] == "run it"


async def test_permission_dialog_allows_once(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(
        reply(tool_use("Bash", {"command": "echo allowed-ran"})),
        lambda body: reply(text("ok: " + body["messages"][-1]["content"][0]["content"].strip())),
    )
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="default"))
    dialog_shown = asyncio.Event()

    def watch(message: Message) -> None:
        if isinstance(message, events.ScreenResume) and isinstance(app.screen, PermissionScreen):
            dialog_shown.set()

    async with app.run_test(size=(120, 40), message_hook=watch) as pilot:
        await type_prompt(pilot, app, "go")
        await asyncio.wait_for(dialog_shown.wait(), timeout=30)
        await pilot.pause()
        assert "echo allowed-ran" in screen_text(app)
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        answers = [m.source for m in app.query("MarkdownView.assistant")]
        assert answers == ["ok: allowed-ran"]
        await app.action_quit()


@pytest.mark.parametrize(
    ("options", "break_settings", "says"),
    [
        ({"resume": "nonexistent"}, False, "no session matches 'nonexistent'"),
        ({}, True, "is a directory, not a settings file"),
        ({"sandbox": "grpc://127.0.0.1:1"}, False, "refused the connection (is it running?)"),
    ],
)
async def test_start_up_failures_are_shown_on_screen(
    tui_env: Path, options: dict, break_settings: bool, says: str
) -> None:
    if break_settings:
        (tui_env / ".tether" / "settings.toml").mkdir(parents=True)
    app = TetherApp(HarnessOptions(project_dir=tui_env, **options))
    async with app.run_test(size=(160, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        errors = [str(widget.render()) for widget in app.query("ErrorMessage")]
        assert len(errors) == 1 and says in errors[0], errors
        assert app.query_one("#prompt", PromptArea).disabled
        assert "unavailable" in screen_text(app)
        await app.action_quit()
    assert not list((tui_env.parent / "tether-home").rglob("*.jsonl")), "a start that failed leaves no session"


async def test_an_initial_prompt_is_sent_once_the_session_is_ready(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(text("Answer to the first prompt.")))
    app = TetherApp(HarnessOptions(project_dir=tui_env), initial_prompt="what is in here?")
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert [m.source for m in app.query("MarkdownView.assistant")] == ["Answer to the first prompt."]
        assert "what is in here?" in screen_text(app)
        assert not app.query_one("#prompt", PromptArea).disabled
        await app.action_quit()
    assert [r.body["messages"][0]["content"][0]["text"] for r in fake_api.message_requests] == ["what is in here?"]


async def test_an_unpriced_model_shows_cost_unknown_from_the_start(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env, model="claude-unpriced-9"))
    async with app.run_test(size=(160, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        status = screen_text(app)
        assert "cost unknown" in status and "$0.0000" not in status
        await app.action_quit()
    priced = TetherApp(HarnessOptions(project_dir=tui_env))
    async with priced.run_test(size=(160, 40)) as pilot:
        await priced.workers.wait_for_complete()
        await pilot.pause()
        assert "$0.0000" in screen_text(priced) and "cost unknown" not in screen_text(priced)
        await priced.action_quit()


async def test_the_terminal_driver_tells_background_imports_of_a_key_from_its_input_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop hears of a key only once it gets the GIL from the threads importing at start-up: the
    # driver's own input thread tells them, so that they stand aside before the key is handled.
    import threading

    from textual.app import App

    from agent import background_import

    app = TetherApp(HarnessOptions(project_dir=tmp_path))
    driver_class = app.get_driver_class()
    assert issubclass(driver_class, App.get_driver_class(app)), "Textual's driver for this platform"
    posted: list[Message] = []
    monkeypatch.setattr(driver_class, "send_message", lambda self, message: posted.append(message))
    driver = driver_class(app)

    def input_thread(event: events.Event) -> None:
        thread = threading.Thread(target=driver.process_message, args=(event,))
        thread.start()
        thread.join()

    monkeypatch.setattr(background_import, "_quiet_after", 0.0)
    input_thread(events.MouseMove(None, 1, 1, 0, 0, 0, False, False, False))
    assert background_import.quiet_in() == 0, "moving the mouse over the screen is not using it"
    input_thread(events.Key("pageup", None))
    assert background_import.quiet_in() > 0, "a key pauses background imports at once"
    assert [type(message) for message in posted] == [events.MouseMove, events.Key], "and still reaches the app"
