"""tether in a real terminal (tmux) against the fake Messages API: the permission dialog, a deny, Shift+Tab.

Read back with ``capture-pane``; every wait is for text on the screen, bounded.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid

import pytest

from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tether_cli import TETHER, TetherEnv

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

WAIT_S = 60.0


class Terminal:
    """One tmux session running a command, 100x30."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: str) -> None:
        self.name = f"tether-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"cd {shlex.quote(cwd)} && env -i {exports} {shlex.join(command)}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "100", "-y", "30", line], check=True)

    def screen(self) -> str:
        """What the pane shows now."""
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, check=True
        ).stdout

    def wait_until(self, check, what: str) -> str:
        """The screen once ``check(screen)`` holds; each look is one capture-pane, bounded by WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while True:
            shown = self.screen()
            if check(shown):
                return shown
            assert time.monotonic() < deadline, f"{what} never happened; the screen:\n{shown}"

    def wait_for(self, needle: str) -> str:
        """The screen once it shows ``needle``."""
        return self.wait_until(lambda shown: needle in shown, f"{needle!r} on screen")

    def keys(self, *keys: str) -> None:
        """Press ``keys`` (tmux key names, or literal text)."""
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def close(self) -> None:
        """End the session."""
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False)


def test_deny_in_a_real_terminal_hands_the_prompt_back_and_shift_tab_changes_the_mode(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    fake_api.script(
        reply(tool_use("Bash", {"command": "rm -rf build", "description": "Remove the build"})),
        reply(text("Understood, leaving it.")),
    )
    env = {
        **tether_env.env,
        "ANTHROPIC_BASE_URL": fake_api.base_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "TERM": "xterm-256color",
    }
    term = Terminal([*TETHER], env, str(tether_env.project))
    try:
        shown = term.wait_for("embedded: ready")
        assert "ask before edits" in shown and "Enter sends" in shown, "the first screen shows the mode and hints"
        term.keys("-l", "clean up")
        term.keys("Enter")
        shown = term.wait_for("Allow Bash to run in the sandbox?")
        assert "Remove the build" in shown and "rm -rf build" in shown and "Bash(rm:*)" in shown
        term.keys("-l", "n")
        term.wait_until(lambda shown: "Allow Bash" not in shown, "the dialog closing")
        term.keys("BTab")
        term.wait_for("accept edits")
        term.keys("-l", "keep it")
        term.keys("Enter")
        term.wait_for("Understood, leaving it.")
    finally:
        term.close()
    assert len(fake_api.message_requests) == 2, "the model did not carry on after the deny"
    said = fake_api.message_requests[1].body["messages"][-1]["content"][0]["content"]
    assert "denied" in said and "stopped the turn" in said
