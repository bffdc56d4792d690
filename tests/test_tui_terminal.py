"""The real ``tether`` TUI in a real terminal (tmux): typed with send-keys, read with capture-pane.

Against the fake Messages API and the embedded sandbox, as a user would meet it.
The screen is polled until it shows what is awaited, within a bound: a terminal
has no event to wait on but its contents.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.processes import host_pids, unique_seconds
from tests.fixtures.tether_cli import TETHER, TetherEnv

SCREEN_WAIT_S = 60.0
"""Bound on waiting for the screen to show something (start-up imports the SDK, starts a host)."""

if shutil.which("tmux") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("tmux is not installed; .ci/run installs it")
    pytest.skip("tmux is not installed", allow_module_level=True)


@dataclass
class Terminal:
    """One tmux server and session running a command, 120x34."""

    server: str
    """The tmux server's socket name (-L), private to the test."""

    def screen(self) -> str:
        """What the terminal shows now."""
        return subprocess.run(
            ["tmux", "-L", self.server, "capture-pane", "-p", "-t", "main"], capture_output=True, text=True, check=True
        ).stdout

    def keys(self, *keys: str) -> None:
        """Type ``keys`` (tmux key names, or literal text)."""
        subprocess.run(["tmux", "-L", self.server, "send-keys", "-t", "main", *keys], check=True)

    def wait_for(self, seen: Callable[[str], bool], what: str) -> str:
        """The screen once ``seen(screen)`` holds; fails with the screen after ``SCREEN_WAIT_S``."""
        deadline = time.monotonic() + SCREEN_WAIT_S
        while True:
            screen = self.screen()
            if seen(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {what}:\n{screen}")
            time.sleep(0.05)  # polling the screen: there is nothing else to wait on

    def close(self) -> None:
        """End the terminal and what runs in it."""
        subprocess.run(["tmux", "-L", self.server, "kill-server"], check=False, capture_output=True)


def start_terminal(tether_env: TetherEnv, fake_api: FakeMessagesAPI, *args: str) -> Terminal:
    """``tether ARGS`` started in tmux in the test's project, pointed at the fake API."""
    server = f"tether-test-{secrets.token_hex(4)}"
    env = {
        **tether_env.env,
        "ANTHROPIC_BASE_URL": fake_api.base_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "TERM": "xterm-256color",
    }
    command = " ".join(
        ["env", "-i", *(shlex.quote(f"{k}={v}") for k, v in env.items()), *map(shlex.quote, TETHER), *args]
    )
    subprocess.run(
        [
            "tmux",
            "-L",
            server,
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "120",
            "-y",
            "34",
            "-c",
            str(tether_env.project),
        ]
        + [command],
        check=True,
    )
    return Terminal(server)


@pytest.fixture
def terminal(tether_env: TetherEnv, fake_api: FakeMessagesAPI) -> Iterator[Terminal]:
    """``tether`` started in tmux in the test's project, pointed at the fake API."""
    term = start_terminal(tether_env, fake_api, "--permission-mode", "bypassPermissions")
    try:
        yield term
    finally:
        term.close()


def test_a_prompt_typed_in_a_real_terminal_is_answered_and_the_status_bar_counts(
    terminal: Terminal, fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    fake_api.script(
        reply(text("Looking."), tool_use("Bash", {"command": "echo from-the-sandbox-$((6*7))"})),
        reply(text("The sandbox said **42**.")),
    )
    terminal.wait_for(lambda s: "ready" in s and "0 tokens" in s, "the status bar with a ready sandbox")
    terminal.keys("what does the sandbox say?", "Enter")
    screen = terminal.wait_for(lambda s: "The sandbox said 42." in s, "the answer")
    assert "from-the-sandbox-42" in screen, screen
    status = screen.rstrip().splitlines()[-1]
    # The bar fits 118 cells by dropping its labels ("workspace", "sandbox"), so the state stays in view.
    assert "0 tokens" not in status and "tokens" in status and "direct" in status and "ready" in status, status


def test_esc_during_a_long_command_kills_it_in_the_sandbox(
    terminal: Terminal, fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    seconds = unique_seconds()
    fake_api.script(
        reply(tool_use("Bash", {"command": f"echo long-started; sleep {seconds}"})),
        reply(text("after the interrupt")),
    )
    terminal.wait_for(lambda s: "ready" in s, "a ready sandbox")
    terminal.keys("run the long thing", "Enter")
    terminal.wait_for(lambda s: "long-started" in s, "the command's first output")
    assert host_pids(["sleep", seconds]), "the command is not running in the sandbox"
    terminal.keys("Escape")
    terminal.wait_for(lambda s: "Interrupted" in s, "the interruption")
    deadline = time.monotonic() + SCREEN_WAIT_S
    while host_pids(["sleep", seconds]):
        assert time.monotonic() < deadline, "the interrupted command still runs in the sandbox"
        time.sleep(0.05)


@pytest.mark.parametrize("continued", [False, True], ids=["new session", "tether -c"])
def test_what_is_typed_as_tether_starts_reaches_the_prompt_enter_included(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, continued: bool
) -> None:
    fake_api.script(reply(text("The first answer.")), reply(text("The second answer.")))
    api_env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    first = tether_env.run("-p", "the first prompt", env=api_env)
    assert first.returncode == 0, first.stderr
    term = start_terminal(tether_env, fake_api, *(["-c"] if continued else []))
    try:
        # Typed at once: the keys wait in the terminal, still in cooked mode (Enter becomes a line feed),
        # until tether reads them; with -c, before the conversation is drawn.
        term.keys("-l", "typed at once")
        term.keys("Enter")
        screen = term.wait_for(lambda s: "The second answer." in s, "the answer to what was typed at once")
        assert ("The first answer." in screen) == continued, "-c continues the session; a new one starts empty"
    finally:
        term.close()
    sent = fake_api.message_requests[-1].body["messages"][-1]
    assert [block["text"] for block in sent["content"] if block["type"] == "text"] == ["typed at once"], sent
