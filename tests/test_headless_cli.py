"""The real ``tether`` process, headless, against the fake Messages API and the embedded local sandbox."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from session.store import SessionStore
from tests.fixtures.fake_api import FakeMessagesAPI, hang, reply, text, tool_use
from tests.fixtures.tether_cli import TETHER, TetherEnv

WAIT_S = 30.0
"""Bound on waiting for a tether process (start-up imports the SDK, provisions a sandbox)."""


@pytest.fixture
def api_env(fake_api: FakeMessagesAPI) -> dict[str, str]:
    """The environment that points tether at the fake API."""
    return {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line parsed as JSON (each must be one object)."""
    lines = stdout.splitlines()
    assert lines, "no output"
    parsed = []
    for line in lines:
        obj = json.loads(line)
        assert isinstance(obj, dict) and "type" in obj, line
        parsed.append(obj)
    return parsed


def texts(message: dict[str, Any]) -> list[str]:
    """The text blocks of a message."""
    content = message["content"]
    return [content] if isinstance(content, str) else [b["text"] for b in content if b.get("type") == "text"]


def roles(body: dict[str, Any]) -> list[str]:
    """The roles of a request's messages."""
    return [m["role"] for m in body["messages"]]


def test_stream_json_is_one_event_per_line_ending_with_the_result(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(
        reply(text("Running it."), tool_use("Bash", {"command": "echo from-the-sandbox"})),
        reply(text("Done.")),
    )
    proc = tether_env.run(
        "-p", "run it", "--output-format", "stream-json", "--permission-mode", "bypassPermissions", env=api_env
    )
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)
    kinds = [e["type"] for e in events]
    expected = [
        "text_delta", "assistant", "usage", "tool_started", "tool_output", "tool_finished",
        "text_delta", "assistant", "usage", "turn_finished", "result",
    ]  # fmt: skip
    position = 0
    for kind in expected:
        assert kind in kinds[position:], f"{kind} missing after position {position} in {kinds}"
        position = kinds.index(kind, position) + 1
    assert kinds.count("result") == 1 and kinds[-1] == "result"

    result = events[-1]
    assert result["is_error"] is False and result["result"] == "Done." and result["num_turns"] == 2
    assert result["session_id"] == tether_env.session_events()[0]["session_id"]
    started = next(e for e in events if e["type"] == "tool_started")
    assert started["name"] == "Bash" and started["input"] == {"command": "echo from-the-sandbox"}
    finished = next(e for e in events if e["type"] == "tool_finished")
    assert finished["content"] == "from-the-sandbox" and finished["tool_use_id"] == started["tool_use_id"]
    assert "".join(e["text"] for e in events if e["type"] == "text_delta") == "Running it.Done."


def test_max_turns_stops_with_an_error_result(fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    fake_api.script(*[reply(tool_use("Bash", {"command": "true"}))] * 3)
    proc = tether_env.run(
        "-p", "loop", "--max-turns", "2", "--output-format", "json", "--permission-mode", "bypassPermissions", env=api_env
    )
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["is_error"] is True and result["num_turns"] == 2 and result["stop_reason"] == "max_turns"
    assert len(fake_api.message_requests) == 2


def test_continue_and_resume_carry_the_earlier_conversation(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(reply(text("answer A")), reply(text("answer B")), reply(text("answer D")))
    first = tether_env.run("-p", "prompt A", "--output-format", "json", env=api_env)
    assert first.returncode == 0, first.stderr
    session_a = json.loads(first.stdout)["session_id"]

    # -p - reads the prompt from stdin.
    stdin_prompt = "prompt B\nover two lines, from stdin"
    continued = tether_env.run("-c", "-p", "-", input=stdin_prompt, env=api_env)
    assert continued.returncode == 0, continued.stderr
    assert continued.stdout == "answer B\n"
    body = fake_api.message_requests[1].body
    assert roles(body) == ["user", "assistant", "user"]
    assert [texts(m) for m in body["messages"]] == [["prompt A"], ["answer A"], [stdin_prompt]]

    # A newer session of the same project, so resuming A is not just "the latest".
    store = SessionStore(home=tether_env.home)
    try:
        newer = store.create(tether_env.project)
        newer.append("user", {"content": "prompt C"})
        session_c = newer.session_id
    finally:
        store.close()

    resumed = tether_env.run("-r", session_a[:8], "-p", "prompt D", "--output-format", "json", env=api_env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["session_id"] == session_a
    body = fake_api.message_requests[2].body
    assert [texts(m) for m in body["messages"]] == [["prompt A"], ["answer A"], [stdin_prompt], ["answer B"], ["prompt D"]]

    listing = tether_env.run("-r", env=api_env)
    assert listing.returncode == 0, listing.stderr
    assert session_a[:8] in listing.stdout and session_c[:8] in listing.stdout
    assert len(fake_api.message_requests) == 3, "listing sessions asks the model nothing"


def read_lines_until(proc: subprocess.Popen[bytes], done: Callable[[str], bool], timeout: float) -> tuple[list[str], bytes]:
    """Lines of ``proc``'s stdout up to the first one ``done`` accepts, and the bytes read past it.

    AssertionError if no such line comes within ``timeout`` seconds.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                lines.append(line.decode())
                if done(lines[-1]):
                    return lines, buffer
            remaining = deadline - time.monotonic()
            assert remaining > 0 and selector.select(remaining), f"no such line within {timeout} s; got {lines}"
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout closed first; got {lines}"
            buffer += chunk


def test_sigint_during_a_hung_stream_exits_1_promptly_and_logs_the_interruption(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    release = threading.Event()
    stalled = hang(reply(text("This answer stalls after its first words.")), after_events=5, release=release)
    fake_api.script(stalled)
    proc = subprocess.Popen(
        [*TETHER, "-p", "talk", "--output-format", "stream-json"],
        cwd=tether_env.project,
        env={**tether_env.env, **api_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    try:
        # The answer has begun to stream when its first text_delta line is out.
        before, past = read_lines_until(proc, lambda line: json.loads(line)["type"] == "text_delta", WAIT_S)
        assert stalled.reached.is_set()
        signalled = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        rest, err = proc.communicate(timeout=WAIT_S)
        took = time.monotonic() - signalled
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert took < 5.0, f"tether took {took:.1f} s to stop after SIGINT"
    assert "Traceback" not in stderr
    events = json_lines("\n".join(before) + "\n" + (past + rest).decode())
    result = events[-1]
    assert result["type"] == "result" and result["is_error"] is True and result["stop_reason"] == "interrupted"
    assert "turn_finished" in [e["type"] for e in events]
    logged = [e["type"] for e in tether_env.session_events()]
    assert logged.count("interruption") == 1 and "assistant" not in logged


def test_an_unanswered_permission_request_headless_is_a_denial_the_model_sees(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(
        reply(tool_use("Bash", {"command": "touch ran-anyway"})),
        reply(text("I could not run it.")),
    )
    proc = tether_env.run("-p", "make a file", "--output-format", "stream-json", env=api_env)
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)
    asked = [e for e in events if e["type"] == "permission_request"]
    assert [(e["name"], e["input"]) for e in asked] == [("Bash", {"command": "touch ran-anyway"})]
    last = fake_api.message_requests[1].body["messages"][-1]
    (denied,) = [b for b in last["content"] if b.get("type") == "tool_result"]
    assert denied["is_error"] is True
    assert "did not allow" in denied["content"] and "headless" in denied["content"]
    assert not any(e["type"] == "tool_output" for e in events)
