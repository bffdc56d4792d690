"""The prompt, the slash commands and the session picker, driven by Pilot as a person would."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from textual import events

from agent.harness import HarnessOptions
from session.store import SessionStore
from tests.fixtures.fake_api import FakeMessagesAPI, hang, reply, text
from tests.fixtures.tui import screen_text, type_prompt, until
from tui.app import TetherApp
from tui.commands import COMMANDS, parse_command
from tui.history import PromptHistory
from tui.picker import SessionPickerScreen, age
from tui.prompt import Suggestions


def sent_prompts(fake_api: FakeMessagesAPI) -> list[str]:
    """The newest user text of each request the model got."""
    found = []
    for request in fake_api.message_requests:
        content = request.body["messages"][-1]["content"]
        found.append(content if isinstance(content, str) else content[0].get("text", ""))
    return found


def make_session(home: Path, project: Path, prompt: str, answer: str) -> str:
    """A session in the store with one prompt and its answer; returns its id."""
    store = SessionStore(home)
    log = store.create(project)
    log.append("user", {"content": prompt})
    message = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    log.append("assistant", {"message": message, "model": "m"})
    log.close()
    store.close()
    return log.session_id


async def test_history_walks_with_up_and_down_and_is_kept_per_project(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(text("one")), reply(text("two")))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        for prompt in ("first prompt", "second prompt"):
            await type_prompt(pilot, app, prompt)
            await app.workers.wait_for_complete()
        area = app.prompt_area
        await pilot.press(*"draft")
        await pilot.press("up")
        assert area.text == "second prompt"
        await pilot.press("up")
        assert area.text == "first prompt"
        await pilot.press("up")
        assert area.text == "first prompt", "past the oldest, Up stays"
        await pilot.press("down", "down")
        assert area.text == "draft", "past the newest, the draft comes back"
        await pilot.press("ctrl+j", *"x")
        assert area.text == "draft\nx"
        await pilot.press("up")
        assert area.text == "draft\nx", "Up on the second line moves the cursor, not the history"
        await app.action_quit()
    again = TetherApp(HarnessOptions(project_dir=tui_env))
    async with again.run_test(size=(120, 34)) as pilot:
        await again.workers.wait_for_complete()
        again.prompt_area.focus()
        await pilot.press("up")
        assert again.prompt_area.text == "second prompt", "the history was not kept"
        await again.action_quit()
    other = PromptHistory.for_project(tui_env.parent / "elsewhere")
    assert other.entries == []


async def test_shift_enter_adds_a_line_and_enter_sends_both(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(text("ok")))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await app.workers.wait_for_complete()
        app.prompt_area.focus()
        await pilot.press("a", "shift+enter", "b", "enter")
        await app.workers.wait_for_complete()
        assert sent_prompts(fake_api) == ["a\nb"]
        await app.action_quit()


async def test_a_large_paste_is_collapsed_and_expanded_on_send(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(text("got it")))
    pasted = "".join(f"line {n}\n" for n in range(40))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await app.workers.wait_for_complete()
        area = app.prompt_area
        area.focus()
        await pilot.press(*"look: ")
        app.post_message(events.Paste(pasted))
        await pilot.pause()
        assert area.text == "look: [Pasted text #1, 40 lines]"
        app.post_message(events.Paste("short"))
        await pilot.pause()
        assert area.text.endswith("]short"), "a short paste goes in as it is"
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        assert sent_prompts(fake_api) == ["look: " + pasted + "short"]
        await app.action_quit()


async def test_slash_completion_lists_commands_and_tab_accepts(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await app.workers.wait_for_complete()
        app.prompt_area.focus()
        await pilot.press("/", "c")
        suggestions = app.query_one(Suggestions)
        await until(pilot, lambda: suggestions.display)
        assert [c.value for c in suggestions.completions] == ["/compact", "/cost", "/copy", "/clear"]
        await pilot.press("down", "tab")
        assert app.prompt_area.text == "/cost"
        assert not suggestions.display
        await pilot.press("escape")  # nothing to hide: the app's own Esc (interrupt) runs, nothing breaks
        app.prompt_area.text = ""
        await pilot.press("/", "h")
        await until(pilot, lambda: suggestions.display)
        await pilot.press("escape")
        assert not suggestions.display and app.prompt_area.text == "/h"
        await app.action_quit()
    assert fake_api.message_requests == []


async def test_help_and_unknown_commands_never_reach_the_model(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_prompt(pilot, app, "/help")
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = screen_text(app)
        for name in COMMANDS.commands:
            assert f"/{name}" in screen
        assert "/resume [ID]" in screen and "/export [md|json] [FILE]" in screen, "arguments lost as markup"
        app.prompt_area.text = "/cots"
        await pilot.press("end", "space", "backspace")
        await pilot.press("escape", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        errors = [str(w.render()) for w in app.query("ErrorMessage")]
        assert errors and "Unknown command /cots" in errors[-1] and "/cost" in errors[-1], errors
        await app.action_quit()
    assert fake_api.message_requests == []
    assert parse_command("/etc/hosts is broken") is None
    assert parse_command("/model  claude-x ") == ("model", "claude-x")


async def test_information_commands(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(text("first answer")))
    app = TetherApp(
        HarnessOptions(project_dir=tui_env, permission_mode="acceptEdits", allowed_tools=["Bash(git status:*)"])
    )
    async with app.run_test(size=(160, 50)) as pilot:
        await type_prompt(pilot, app, "hello")
        await app.workers.wait_for_complete()

        async def run(command: str) -> str:
            app.prompt_area.text = command
            app.prompt_area.submit()
            await app.workers.wait_for_complete()
            await pilot.pause()
            return str(app.query("Notice").last().render())

        assert "tokens, cost $" in await run("/cost")
        shown = await run("/permissions")
        assert "Permission mode: acceptEdits" in shown and "Bash(git status:*)" in shown
        shown = await run("/sandbox")
        lease = app.harness.lease
        assert lease is not None and lease.info is not None
        assert lease.info.sandbox_id in shown and "generation 1" in shown and "Checkpoints:" in shown
        assert "Host: embedded" in shown and f"Isolation: {lease.info.isolation}" in shown
        assert "claude-other-1" in await run("/model claude-other-1")
        assert app.harness.model.model == "claude-other-1" and "claude-other-1" in screen_text(app)
        assert "Exported" in await run("/export json out.json")
        exported = json.loads((tui_env / "out.json").read_text())
        assert exported["session_id"] == app.harness.session_id
        assert "Exported" in await run("/export")
        assert "## User\n\nhello" in (tui_env / f"tether-{app.harness.session_id[:8]}.md").read_text()
        await app.action_quit()
    assert len(fake_api.message_requests) == 1


async def test_new_clear_and_quit_and_the_exit_line(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(text("answer one")), reply(text("answer two")))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await type_prompt(pilot, app, "prompt one")
        await app.workers.wait_for_complete()
        first = app.harness.session_id
        await type_prompt(pilot, app, "/new")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.harness.session_id != first
        assert "prompt one" not in screen_text(app) and "New session" in screen_text(app)
        await type_prompt(pilot, app, "prompt two")
        await app.workers.wait_for_complete()
        second = app.harness.session_id
        assert len(fake_api.message_requests[-1].body["messages"]) == 1, "the new session carried the old one"
        await type_prompt(pilot, app, "/clear")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "prompt two" not in screen_text(app)
        await type_prompt(pilot, app, "/quit")
        await app.workers.wait_for_complete()
    assert app.return_code == 0
    assert app.exit_session_id is None, "the cleared, unused session is not offered for resuming"
    assert {s.session_id for s in SessionStore(tui_env.parent / "tether-home").list(tui_env)} == {first, second}


async def test_a_prompt_sent_during_a_turn_is_queued_then_sent(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    release = threading.Event()
    fake_api.script(hang(reply(text("slow first answer")), after_events=4, release=release), reply(text("second")))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await type_prompt(pilot, app, "first")
        await until(pilot, lambda: len(fake_api.message_requests) == 1)
        assert app.busy and not app.prompt_area.disabled, "the prompt takes input during a turn"
        await pilot.press(*"queued one", "enter")
        await pilot.pause()
        assert app.queued == ["queued one"]
        assert "queued: queued one" in screen_text(app)
        release.set()
        await until(pilot, lambda: len(fake_api.message_requests) == 2 and not app.busy)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "queued:" not in screen_text(app)
        assert sent_prompts(fake_api) == ["first", "queued one"]
        await app.action_quit()


async def test_the_prompt_takes_input_before_the_sandbox_is_ready(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    # The recipe's setup holds provisioning until the test creates .release in the (direct) workspace.
    recipe = tui_env.parent / "slow.toml"
    recipe.write_text('name = "slow"\nsetup = ["while [ ! -e .release ]; do sleep 0.02; done"]\n')
    fake_api.script(reply(text("answered after the sandbox came up")), reply(text("and the typed one")))
    app = TetherApp(HarnessOptions(project_dir=tui_env, recipe=str(recipe)), initial_prompt="from the command line")
    async with app.run_test(size=(120, 34)) as pilot:
        await until(pilot, lambda: not app.prompt_area.disabled)
        await pilot.pause()
        assert app.status.sandbox_state == "starting"
        assert "a prompt · / commands" in screen_text(app)  # (the cursor cell splits off the "T")
        await pilot.press(*"typed at once", "enter")
        await pilot.pause()
        assert app.queued == ["from the command line", "typed at once"]
        assert "queued: typed at once" in screen_text(app)
        assert fake_api.message_requests == [], "nothing reaches the model before the sandbox is ready"
        (tui_env / ".release").touch()
        await until(pilot, lambda: len(fake_api.message_requests) == 2 and not app.busy)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert sent_prompts(fake_api) == ["from the command line", "typed at once"]
        screen = screen_text(app)
        assert "queued:" not in screen and "and the typed one" in screen
        await app.action_quit()


async def test_quit_while_the_sandbox_starts_leaves_nothing_running(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    recipe = tui_env.parent / "slow.toml"
    recipe.write_text('name = "slow"\nsetup = ["while [ ! -e .release ]; do sleep 0.02; done"]\n')
    app = TetherApp(HarnessOptions(project_dir=tui_env, recipe=str(recipe)))
    async with app.run_test(size=(120, 34)) as pilot:
        await until(pilot, lambda: app.harness.client is not None and app.harness.lease is not None)
        assert app.harness.embedded is not None and app.harness.embedded.process is not None
        process = app.harness.embedded.process
        assert app.status.sandbox_state == "starting" and not app.prompt_area.disabled
        await app.action_quit()
        assert app.return_code == 0
        assert process.returncode is not None, "quitting while the sandbox starts stops the embedded host"


async def test_at_completes_workspace_paths(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    (tui_env / "src").mkdir()
    (tui_env / "src" / "main.py").write_text("print()\n")
    (tui_env / "setup.cfg").write_text("")
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await app.workers.wait_for_complete()
        app.prompt_area.focus()
        await pilot.press(*"look at @s")
        suggestions = app.query_one(Suggestions)
        await until(pilot, lambda: suggestions.display)
        assert [c.value for c in suggestions.completions] == ["@setup.cfg", "@src/"]
        await pilot.press("down", "enter")
        assert app.prompt_area.text == "look at @src/"
        await until(pilot, lambda: [c.value for c in suggestions.completions] == ["@src/main.py"])
        await pilot.press("tab")
        assert app.prompt_area.text == "look at @src/main.py "
        await app.action_quit()
    assert fake_api.message_requests == []


async def test_command_palette_runs_slash_commands(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"/sandbox")
        await until(pilot, lambda: "host, sandbox, recipe" in screen_text(app))
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await until(pilot, lambda: "Isolation:" in screen_text(app))
        await app.action_quit()


async def test_resume_opens_the_picker_searches_and_switches(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    home = tui_env.parent / "tether-home"
    older = make_session(home, tui_env, "about the parser", "the parser is in parse.py")
    newer = make_session(home, tui_env, "fix the flaky test", "the test sleeps")
    elsewhere = make_session(home, tui_env.parent / "other", "another project prompt", "ok")
    fake_api.script(reply(text("continuing")))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(120, 34)) as pilot:
        await type_prompt(pilot, app, "/resume")
        await until(pilot, lambda: isinstance(app.screen, SessionPickerScreen))
        picker = app.screen
        assert isinstance(picker, SessionPickerScreen)
        await until(pilot, lambda: [s.session_id for s in picker.shown] == [newer, older])
        await until(pilot, lambda: "the test sleeps" in screen_text(app))  # the preview
        await pilot.press("ctrl+a")
        await until(pilot, lambda: elsewhere in [s.session_id for s in picker.shown])
        await pilot.press("ctrl+a")
        await pilot.press(*"parser")
        await until(pilot, lambda: [s.session_id for s in picker.shown] == [older])
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.harness.session_id == older
        await type_prompt(pilot, app, "go on")
        await app.workers.wait_for_complete()
        sent = str(fake_api.message_requests[-1].body["messages"])
        assert "the parser is in parse.py" in sent
        await app.action_quit()
    assert app.exit_session_id == older


async def test_tether_r_without_an_id_starts_on_the_picked_session(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    picked = make_session(tui_env.parent / "tether-home", tui_env, "the only one", "yes")
    app = TetherApp(HarnessOptions(project_dir=tui_env), pick_session=True)
    async with app.run_test(size=(120, 34)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SessionPickerScreen) and bool(app.screen.shown))
        assert app.session_id is None, "the harness waits for the pick"
        await pilot.press("down", "up", "enter")
        await app.workers.wait_for_complete()
        assert app.harness.session_id == picked
        await app.action_quit()
    cancelled = TetherApp(HarnessOptions(project_dir=tui_env), pick_session=True)
    async with cancelled.run_test(size=(120, 34)) as pilot:
        await until(pilot, lambda: isinstance(cancelled.screen, SessionPickerScreen))
        await pilot.press("escape")
        await cancelled.workers.wait_for_complete()
    assert cancelled.exit_session_id is None and cancelled.session_id is None


def test_age_in_the_largest_unit() -> None:
    from datetime import UTC, datetime

    now = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
    assert age("2025-01-02T11:59:30Z", now) == "30s"
    assert age("2025-01-02T09:00:00Z", now) == "3h"
    assert age("2024-12-30T12:00:00Z", now) == "3d"
    assert age("garbage", now) == "?"
