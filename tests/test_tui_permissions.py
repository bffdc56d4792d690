"""The permission dialog, the plan dialog, Shift+Tab, Esc and the status bar, driven by Pilot.

Real harness, embedded sandbox host, fake Messages API; waits are on events, never on time.
"""

from __future__ import annotations

import asyncio
import signal
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from textual import events
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input, Markdown

from agent import events as ev
from agent.harness import Harness, HarnessOptions
from agent.permissions import project_settings_path
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tui import screen_text, type_prompt
from tui.app import TetherApp
from tui.permission import PermissionScreen
from tui.plan import PlanScreen
from tui.widgets import PromptArea

WAIT_S = 30.0


class Watched:
    """A TetherApp whose harness events and screens can be waited on."""

    def __init__(self, options: HarnessOptions) -> None:
        self.events: list[ev.AgentEvent] = []
        self._waiters: list[tuple[Callable[[ev.AgentEvent], bool], asyncio.Event]] = []
        self._screens: dict[type, asyncio.Event] = {}
        self.app = TetherApp(options, Harness(options, self._emit))

    async def _emit(self, event: ev.AgentEvent) -> None:
        await self.app.on_agent_event(event)
        self.events.append(event)
        for predicate, flag in self._waiters:
            if predicate(event):
                flag.set()

    async def event(self, predicate: Callable[[ev.AgentEvent], bool]) -> None:
        """Wait for an event matching ``predicate`` (one seen already counts)."""
        flag = asyncio.Event()
        if any(predicate(e) for e in self.events):
            return
        self._waiters.append((predicate, flag))
        await asyncio.wait_for(flag.wait(), WAIT_S)

    def hook(self, message: Message) -> None:
        """Pilot's message hook: notes each screen that comes up."""
        if isinstance(message, events.ScreenResume):
            self._screens.setdefault(type(self.app.screen), asyncio.Event()).set()

    async def screen(self, kind: type[Screen]) -> None:
        """Wait until a screen of ``kind`` is up."""
        await asyncio.wait_for(self._screens.setdefault(kind, asyncio.Event()).wait(), WAIT_S)
        assert isinstance(self.app.screen, kind)


def status_line(app: TetherApp) -> str:
    """The status bar as the user reads it."""
    return str(app.query_one("#status").render())


async def _turn_over(pilot, watched: Watched) -> None:
    await watched.event(lambda e: isinstance(e, ev.TurnFinished))
    await watched.app.workers.wait_for_complete()
    await pilot.pause()


async def test_y_allows_once_and_a_saves_the_offered_prefix_rule(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(
        reply(tool_use("Bash", {"command": "echo first run", "description": "Say it once"})),
        reply(tool_use("Bash", {"command": "echo second run"})),
        reply(tool_use("Bash", {"command": "echo third run"})),
        reply(text("all ran")),
    )
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="default"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "go")
        await watched.screen(PermissionScreen)
        await pilot.pause()
        shown = screen_text(app)
        assert "echo first run" in shown and "Say it once" in shown, "the command with its description"
        assert app.screen.query_one("#rule", Input).value == "Bash(echo:*)"
        await pilot.press("y")
        await watched.event(lambda e: isinstance(e, ev.PermissionRequest) and e.input["command"] == "echo second run")
        await pilot.pause()
        await pilot.press("a")
        await _turn_over(pilot, watched)
        asked = [e for e in watched.events if isinstance(e, ev.PermissionRequest)]
        assert len(asked) == 2, "the saved rule allowed the third call without asking"
        saved = tomllib.loads(project_settings_path(tui_env).read_text())
        assert saved["permissions"]["allow"] == ["Bash(echo:*)"]
        assert [m.source for m in app.query("MarkdownView.assistant")] == ["all ran"]
        await app.action_quit()


async def test_the_rule_can_be_edited_before_it_is_saved(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(tool_use("Bash", {"command": "npm test -- --watch"})), reply(text("ok")))
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="default"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "go")
        await watched.screen(PermissionScreen)
        rule = app.screen.query_one("#rule", Input)
        assert rule.value == "Bash(npm test:*)"
        rule.focus()
        rule.value = "Bash(npm:*)"
        await pilot.press("enter")
        await _turn_over(pilot, watched)
        assert tomllib.loads(project_settings_path(tui_env).read_text())["permissions"]["allow"] == ["Bash(npm:*)"]
        await app.action_quit()


async def _deny_with(pilot, watched: Watched, keys: list[str], reason: str) -> None:
    """Deny the asked call with ``keys`` (after typing ``reason``); the turn must stop there; then send a prompt."""
    app = watched.app
    await watched.screen(PermissionScreen)
    await pilot.pause()
    if reason:
        field = app.screen.query_one("#reason", Input)
        field.focus()
        await pilot.press(*reason)
    await pilot.press(*keys)
    await _turn_over(pilot, watched)
    done = [e for e in watched.events if isinstance(e, ev.TurnFinished)][-1]
    assert done.stop_reason == "user_stopped"
    prompt = app.query_one("#prompt", PromptArea)
    assert not prompt.disabled and prompt.has_focus, "the prompt is the user's again"
    await type_prompt(pilot, app, "then what")
    await _turn_over(pilot, watched)


async def _run_denial(fake_api: FakeMessagesAPI, tui_env: Path, keys: list[str], reason: str) -> str:
    fake_api.script(
        reply(tool_use("Bash", {"command": "rm -rf build"}), tool_use("Bash", {"command": "echo never"})),
        reply(text("next answer")),
    )
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="default"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "clean")
        await _deny_with(pilot, watched, keys, reason)
        asked = [e for e in watched.events if isinstance(e, ev.PermissionRequest)]
        assert len(asked) == 1, "the rest of the batch was not asked about"
        await app.action_quit()
    assert len(fake_api.message_requests) == 2, "the model did not carry on after the denial"
    last = fake_api.message_requests[-1].body["messages"][-1]
    results = [b for b in last["content"] if b["type"] == "tool_result"]
    assert last["content"][-1] == {"type": "text", "text": "then what", "cache_control": {"type": "ephemeral"}}
    return results[0]["content"]


async def test_n_denies_and_ends_the_turn(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    said = await _run_denial(fake_api, tui_env, ["n"], "")
    assert "denied" in said and "stopped the turn" in said


async def test_escape_denies_and_ends_the_turn(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    said = await _run_denial(fake_api, tui_env, ["escape"], "")
    assert "denied" in said


async def test_enter_in_the_reason_field_denies_with_the_reason(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    said = await _run_denial(fake_api, tui_env, ["enter"], "keep the build")
    assert "keep the build" in said


async def test_shift_tab_cycles_the_permission_mode_in_the_status_bar(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="default"))
    async with app.run_test(size=(160, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        seen = []
        for _ in range(3):
            await pilot.press("shift+tab")
            await pilot.pause()
            assert app.harness.gate is not None
            seen.append((app.harness.gate.mode, status_line(app)))
        assert [mode for mode, _ in seen] == ["acceptEdits", "plan", "default"]
        assert "accept edits" in seen[0][1] and "plan mode" in seen[1][1] and "ask before edits" in seen[2][1]
        assert app.query_one("#prompt", PromptArea).has_focus, "Shift+Tab did not move the focus"
        await app.action_quit()


async def test_shift_tab_reaches_bypass_only_when_started_in_it(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    async with app.run_test(size=(160, 40)) as pilot:
        await app.workers.wait_for_complete()
        modes = []
        for _ in range(4):
            await pilot.press("shift+tab")
            assert app.harness.gate is not None
            modes.append(app.harness.gate.mode)
        assert modes == ["default", "acceptEdits", "plan", "bypassPermissions"]
        await app.action_quit()


async def test_exit_plan_mode_approved_continues_in_the_chosen_mode(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(
        reply(tool_use("ExitPlanMode", {"plan": "## Plan\n1. write notes.md"})),
        reply(tool_use("Write", {"file_path": "notes.md", "content": "hi\n"})),
        reply(text("written")),
    )
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="plan"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "plan it")
        await watched.screen(PlanScreen)
        await pilot.pause()
        assert app.screen.query_one(Markdown).source == "## Plan\n1. write notes.md"
        assert "Ready to code?" in screen_text(app)
        await pilot.press("1")
        await _turn_over(pilot, watched)
        assert app.harness.gate is not None and app.harness.gate.mode == "acceptEdits"
        assert "accept edits" in status_line(app)
        assert not [e for e in watched.events if isinstance(e, ev.PermissionRequest)]
        await app.action_quit()
    assert (tui_env / "notes.md").read_text() == "hi\n", "the direct workspace got the edit without asking"
    first, second, _ = fake_api.message_requests
    assert "ExitPlanMode" in [t["name"] for t in first.body["tools"]]
    assert "ExitPlanMode" not in [t["name"] for t in second.body["tools"]]


async def test_keep_planning_with_feedback_tells_the_model(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(
        reply(tool_use("ExitPlanMode", {"plan": "v1"})),
        reply(tool_use("ExitPlanMode", {"plan": "v2"})),
    )
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="plan"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "plan it")
        await watched.screen(PlanScreen)
        app.screen.query_one("#feedback", Input).focus()
        await pilot.press(*"add tests", "enter")
        await watched.event(lambda e: isinstance(e, ev.PlanApprovalRequest) and e.plan == "v2")
        await pilot.pause()
        await pilot.press("n")
        await _turn_over(pilot, watched)
        assert app.harness.gate is not None and app.harness.gate.mode == "plan"
        assert not app.query_one("#prompt", PromptArea).disabled
        await app.action_quit()
    assert len(fake_api.message_requests) == 2, "keep planning without feedback hands the prompt back"
    feedback = fake_api.message_requests[1].body["messages"][-1]["content"][0]["content"]
    assert "keep planning" in feedback and "add tests" in feedback


async def test_status_bar_shows_the_host_unreachable_once_it_is_killed(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    watched = Watched(HarnessOptions(project_dir=tui_env, heartbeat_s=0.2))
    app = watched.app
    async with app.run_test(size=(160, 40)) as pilot:
        await watched.event(lambda e: isinstance(e, ev.SandboxState) and e.state == "ready" and e.rtt_ms is not None)
        await pilot.pause()
        status = status_line(app)
        assert "sandbox embedded: ready" in status and " ms" in status
        host = app.harness.embedded
        assert host is not None and host.process is not None
        host.process.send_signal(signal.SIGKILL)
        await host.process.wait()
        await watched.event(lambda e: isinstance(e, ev.SandboxState) and e.state == "unreachable")
        await pilot.pause()
        status = status_line(app)
        assert "unreachable" in status and "ready" not in status
        await app.action_quit()


async def test_escape_stops_a_running_command_at_once(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(
        reply(tool_use("Bash", {"command": "echo begun; sleep 600"})),
        reply(text("stopped then")),
    )
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    app = watched.app
    async with app.run_test(size=(120, 40)) as pilot:
        await type_prompt(pilot, app, "wait long")
        await watched.event(lambda e: isinstance(e, ev.ToolOutput) and "begun" in e.text)
        await pilot.press("escape")
        await _turn_over(pilot, watched)
        done = [e for e in watched.events if isinstance(e, ev.TurnFinished)][-1]
        assert done.stop_reason == "interrupted"
        await type_prompt(pilot, app, "why")
        await _turn_over(pilot, watched)
        await app.action_quit()
    said = fake_api.message_requests[-1].body["messages"][-1]["content"][0]["content"]
    assert "nterrupted" in said and "begun" in said, "the partial output reached the model"


async def test_a_call_s_duration_leaves_out_the_time_the_dialog_waited(
    fake_api: FakeMessagesAPI, tui_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui import tool_panels

    now = [0.0]
    monkeypatch.setattr(tool_panels, "clock", lambda: now[0])
    fake_api.script(reply(tool_use("Bash", {"command": "echo waited"})), reply(text("done")))
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="default"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "go")
        await watched.screen(PermissionScreen)
        now[0] = 95.0  # the user read the dialog for a minute and a half
        await pilot.press("y")
        await _turn_over(pilot, watched)
        panel = app.query_one(tool_panels.ToolPanel)
        assert panel.ending == "exit 0 · 0.0 s", panel.ending
        await app.action_quit()
