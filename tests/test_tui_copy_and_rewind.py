"""Copying (a mouse selection, the last answer), Esc twice to rewind, and the transcript redrawn when the
conversation in effect changes (rewind, resume, new): Pilot against the fake Messages API."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.harness import HarnessOptions
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tui import screen_text, type_prompt, until
from tests.test_tui_prompt import make_session
from tui import app as tui_app
from tui.app import COPY_ANSWER_KEY, TetherApp
from tui.rewind import RewindScreen
from tui.streaming_markdown import MarkdownView
from tui.widgets import UserMessage

ANSWER = "# Heading\n\nSome **bold** words and `code`.\n\n- one\n- two\n"


async def test_a_mouse_selection_in_an_answer_is_copied_with_ctrl_c(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(text("alpha beta gamma delta")))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await type_prompt(pilot, app, "hi")
        await app.workers.wait_for_complete()
        await pilot.pause()
        answer = app.query_one("MarkdownView.assistant", MarkdownView)
        # Drag from the start of the answer's first line to the end of "beta".
        assert await pilot.mouse_down(answer, offset=(1, 0))
        await pilot.hover(answer, offset=(10, 0))
        await pilot.mouse_up(answer, offset=(10, 0))
        await pilot.pause()
        assert app.screen.get_selected_text() == "alpha beta"
        await pilot.press("ctrl+c")
        assert app.clipboard == "alpha beta"
        await app.action_quit()


async def test_the_last_answer_is_copied_as_markdown_by_key_and_by_command(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    fake_api.script(reply(text("first answer")), reply(text(ANSWER)))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press(COPY_ANSWER_KEY)
        assert app.clipboard == "", "nothing to copy before the first answer"
        await type_prompt(pilot, app, "one")
        await app.workers.wait_for_complete()
        await pilot.press(COPY_ANSWER_KEY)
        assert app.clipboard == "first answer"
        await type_prompt(pilot, app, "two")
        await app.workers.wait_for_complete()
        await pilot.press(COPY_ANSWER_KEY)
        assert app.clipboard == ANSWER, "the raw Markdown, not the rendered text"
        app.copy_to_clipboard("something else")
        await type_prompt(pilot, app, "/copy")
        await app.workers.wait_for_complete()
        assert app.clipboard == ANSWER
        app.copy_to_clipboard("something else")
        await pilot.press("ctrl+p")
        await pilot.press(*"/copy")
        await until(pilot, lambda: "the last answer's Markdown" in screen_text(app))
        await pilot.press("enter")
        await until(pilot, lambda: app.clipboard == ANSWER)
        await app.action_quit()
    assert len(fake_api.message_requests) == 2, "/copy went to the model"


async def _three_prompts(pilot, app: TetherApp, fake_api: FakeMessagesAPI) -> None:
    for n in (1, 2, 3):
        fake_api.script(reply(tool_use("Bash", {"command": f"echo v{n} > shared.txt"})), reply(text(f"answer {n}")))
        await type_prompt(pilot, app, f"prompt {n}")
        await app.workers.wait_for_complete()
    await pilot.pause()


async def test_esc_twice_on_an_empty_prompt_opens_rewind(
    fake_api: FakeMessagesAPI, tui_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    async with app.run_test(size=(120, 40)) as pilot:
        await _three_prompts(pilot, app, fake_api)
        monkeypatch.setattr(tui_app, "ESC_TWICE_SECONDS", 0.0)  # every second press comes too late
        await pilot.press("escape", "escape")
        await pilot.pause()
        assert not isinstance(app.screen, RewindScreen), "two presses further apart than the window are two Escs"
        monkeypatch.setattr(tui_app, "ESC_TWICE_SECONDS", 60.0)  # a loaded machine cannot make them too slow
        app.prompt_area.text = "a draft"
        await pilot.press("escape", "escape")
        await pilot.pause()
        assert not isinstance(app.screen, RewindScreen), "Esc twice over a draft must not open rewind"
        app.prompt_area.text = ""
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, RewindScreen), "one Esc opens nothing"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RewindScreen))
        assert "3. prompt 3" in screen_text(app)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, RewindScreen))
        await app.workers.wait_for_complete()
        await app.action_quit()


async def test_rewinding_the_conversation_redraws_the_transcript_and_the_status(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    async with app.run_test(size=(120, 40)) as pilot:
        await _three_prompts(pilot, app, fake_api)
        tokens_before = app.status.tokens
        assert tokens_before > 0
        await type_prompt(pilot, app, "/rewind")
        await until(pilot, lambda: isinstance(app.screen, RewindScreen))
        await pilot.press("down", "enter")  # prompt 2
        await until(pilot, lambda: "restore shared.txt" in screen_text(app))
        await pilot.press("down", "enter")  # conversation only
        await app.workers.wait_for_complete()
        await pilot.pause()
        users = [str(m.render()) for m in app.query(UserMessage)]
        answers = [m.source for m in app.query("MarkdownView.assistant")]
        assert users == ["prompt 1"], users
        assert answers == ["answer 1"], answers
        screen = screen_text(app)
        assert "answer 3" not in screen and "prompt 3" not in screen and "Rewound to before prompt 2" in screen
        # Spent tokens stay spent; the context is the branch that goes on (prompt 1's last answer).
        assert app.status.tokens == tokens_before
        log = app.harness.log
        assert log is not None
        last = [e for e in log.live_path() if e.type == "assistant"][-1].payload["message"]["usage"]
        assert app.status.context_tokens == sum(v for k, v in last.items() if k.endswith("tokens") and v)
        # The branch continues from here, on screen as in the request.
        fake_api.script(reply(text("from the rewound point")))
        app.prompt_area.text = ""
        await type_prompt(pilot, app, "again")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert [str(m.render()) for m in app.query(UserMessage)] == ["prompt 1", "again"]
        assert [m.source for m in app.query("MarkdownView.assistant")] == ["answer 1", "from the rewound point"]
        await app.action_quit()


async def test_resume_and_new_show_only_the_conversation_in_effect(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    home = tui_env.parent / "tether-home"
    other = make_session(home, tui_env, "the other session's prompt", "the other session's answer")
    fake_api.script(reply(text("this session's answer")))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await type_prompt(pilot, app, "this session's prompt")
        await app.workers.wait_for_complete()
        await type_prompt(pilot, app, f"/resume {other}")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.harness.session_id == other
        assert [str(m.render()) for m in app.query(UserMessage)] == ["the other session's prompt"]
        assert [m.source for m in app.query("MarkdownView.assistant")] == ["the other session's answer"]
        screen = screen_text(app)
        assert "this session's" not in screen and f"Resumed session {other}" in screen
        await type_prompt(pilot, app, "/new")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert not app.query(UserMessage) and not app.query("MarkdownView.assistant")
        assert "other session" not in screen_text(app) and app.status.tokens == 0
        await app.action_quit()
