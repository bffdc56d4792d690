"""The status bar's sandbox states driven for real: a docker sandbox removed under the session (lost,
restoring, ready), the embedded host killed (unreachable, then a new host takes over), and the spinner
while the model thinks."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from agent.harness import HarnessOptions
from tests.fixtures.fake_api import FakeMessagesAPI, hang, reply, text, tool_use
from tests.fixtures.sandbox_host import RunningHost
from tests.fixtures.tui import screen_text, type_prompt, until
from tui import status as status_module
from tui.app import TetherApp
from tui.status import StatusLine

HEARTBEAT_S = 0.2
"""A quick heartbeat, so a loss shows within a few tenths of a second."""


def status_text(app: TetherApp) -> str:
    """The status bar as drawn."""
    return str(app.query_one("#status", StatusLine).render())


@pytest.fixture
def drawn_states(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every sandbox state the status bar drew, in order (transient ones too)."""
    states: list[str] = []
    draw = StatusLine.refresh_status

    def recording(self: StatusLine) -> None:
        draw(self)
        if not states or states[-1] != self.status.sandbox_state:
            states.append(self.status.sandbox_state)

    monkeypatch.setattr(StatusLine, "refresh_status", recording)
    return states


@pytest.mark.docker
async def test_a_removed_docker_sandbox_shows_lost_then_restoring_then_ready(
    fake_api: FakeMessagesAPI,
    tui_env: Path,
    docker_sandbox_host: RunningHost,
    docker_engine,
    drawn_states: list[str],
) -> None:
    options = HarnessOptions(
        project_dir=tui_env,
        sandbox=docker_sandbox_host.target,
        sandbox_token=docker_sandbox_host.token,
        permission_mode="bypassPermissions",
        heartbeat_s=HEARTBEAT_S,
    )
    (tui_env / "notes.txt").write_text("kept across the loss\n")
    app = TetherApp(options)
    async with app.run_test(size=(160, 40)) as pilot:
        await app.workers.wait_for_complete()
        await until(pilot, lambda: "ready" in status_text(app) and " ms" in status_text(app), attempts=3000)
        lease = app.harness.lease
        assert lease is not None
        (container,) = docker_engine.containers.list(filters={"label": f"tether.sandbox={lease.sandbox_id}"})
        container.remove(force=True)
        # The heartbeat sees it between prompts and has a new sandbox made at once.
        await until(pilot, lambda: "Sandbox lost" in screen_text(app), attempts=3000)
        await until(pilot, lambda: lease.generation == 2 and ": ready" in status_text(app), attempts=3000)
        assert drawn_states[-3:] == ["lost", "restoring", "ready"], drawn_states
        fake_api.script(reply(tool_use("Bash", {"command": "cat notes.txt"})), reply(text("still here")))
        await type_prompt(pilot, app, "read the notes")
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = screen_text(app)
        assert "kept across the loss" in screen and "still here" in screen
        await app.action_quit()


async def test_a_killed_embedded_host_shows_unreachable_then_a_new_one_takes_over(
    fake_api: FakeMessagesAPI, tui_env: Path, drawn_states: list[str]
) -> None:
    fake_api.script(reply(text("first answer")), reply(tool_use("Bash", {"command": "echo back"})), reply(text("ok")))
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions", heartbeat_s=HEARTBEAT_S))
    async with app.run_test(size=(160, 40)) as pilot:
        await type_prompt(pilot, app, "hello")
        await app.workers.wait_for_complete()
        await until(pilot, lambda: ": ready" in status_text(app), attempts=3000)
        session_id = app.harness.session_id
        embedded = app.harness.embedded
        assert embedded is not None and embedded.process is not None
        embedded_pid = embedded.process.pid
        os.kill(embedded_pid, signal.SIGKILL)
        await until(pilot, lambda: "unreachable" in status_text(app), attempts=3000)
        await until(pilot, lambda: "embedded sandbox host stopped answering" in screen_text(app), attempts=3000)
        # The heartbeat starts a new embedded host and a sandbox there, between prompts.
        await until(pilot, lambda: ": ready" in status_text(app), attempts=3000)
        assert app.harness.embedded is not None and app.harness.embedded.process is not None
        assert app.harness.embedded.process.pid != embedded_pid, "a new embedded host"
        assert app.harness.session_id == session_id
        await type_prompt(pilot, app, "go on")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "echo back" in screen_text(app) and "ok" in screen_text(app)
        await app.action_quit()
    assert "unreachable" in drawn_states and drawn_states[-1] == "ready", drawn_states


async def test_the_spinner_turns_while_the_model_thinks(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    release = threading.Event()
    fake_api.script(hang(reply(text("slowly")), after_events=1, release=release))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(160, 40)) as pilot:
        await type_prompt(pilot, app, "think")
        await until(pilot, lambda: "thinking…" in status_text(app), attempts=3000)
        frames = set()
        await until(pilot, lambda: frames.add(status_text(app)[0]) or len(frames) >= 3, attempts=3000)
        assert frames <= set(status_module.SPINNER)
        release.set()
        await app.workers.wait_for_complete()
        await until(pilot, lambda: "thinking…" not in status_text(app), attempts=3000)
        await app.action_quit()
