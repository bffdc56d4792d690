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


def texts(message: dict[str, Any]) -> list[str]:
    """The text blocks of a message."""
    content = message["content"]
    return [content] if isinstance(content, str) else [b["text"] for b in content if b.get("type") == "text"]


def roles(body: dict[str, Any]) -> list[str]:
    """The roles of a request's messages."""
    return [m["role"] for m in body["messages"]]


# ---------------------------------------------------------------- Claude Code's shapes
# Written against the Agent SDK's documented message types (TypeScript reference, "Message
# Types": SDKSystemMessage, SDKAssistantMessage, SDKUserMessage, SDKPartialAssistantMessage,
# SDKResultMessage, SDKPermissionDenial), not against tether's code.

RESULT_SUBTYPES = {"success", "error_max_turns", "error_during_execution"}
USAGE_KEYS = {"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"}


def check_result(obj: dict[str, Any]) -> None:
    """One ``result`` message, as ``SDKResultMessage`` documents it."""
    assert obj["type"] == "result"
    assert obj["subtype"] in RESULT_SUBTYPES, obj["subtype"]
    assert isinstance(obj["is_error"], bool) and obj["is_error"] == (obj["subtype"] != "success")
    for key in ("duration_ms", "duration_api_ms", "num_turns"):
        assert isinstance(obj[key], int) and obj[key] >= 0, key
    assert obj["duration_api_ms"] <= obj["duration_ms"]
    assert isinstance(obj["session_id"], str) and obj["session_id"]
    assert isinstance(obj["uuid"], str) and obj["uuid"]
    assert isinstance(obj["total_cost_usd"], float)
    assert USAGE_KEYS <= obj["usage"].keys() and all(isinstance(obj["usage"][k], int) for k in USAGE_KEYS)
    if obj["subtype"] == "success":
        assert isinstance(obj["result"], str)
    assert isinstance(obj["permission_denials"], list)
    for denial in obj["permission_denials"]:
        assert set(denial) == {"tool_name", "tool_use_id", "tool_input"}
        assert isinstance(denial["tool_name"], str) and isinstance(denial["tool_input"], dict)


def read_claude_code_stream(stdout: str) -> list[dict[str, Any]]:
    """Parse stream-json output as a Claude Code consumer would, checking every line's shape."""
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines, "no output"
    session_id = lines[0].get("session_id")
    assert lines[0]["type"] == "system" and lines[0]["subtype"] == "init", lines[0]
    for key, kind in (
        ("cwd", str),
        ("model", str),
        ("permissionMode", str),
        ("apiKeySource", str),
        ("tools", list),
        ("mcp_servers", list),
        ("slash_commands", list),
    ):
        assert isinstance(lines[0][key], kind), key
    assert lines[-1]["type"] == "result"
    check_result(lines[-1])
    for obj in lines:
        assert obj["session_id"] == session_id and isinstance(obj["uuid"], str), obj
        kind = obj["type"]
        assert kind in {"system", "assistant", "user", "stream_event", "result"}, kind
        if kind in {"assistant", "user", "stream_event"}:
            assert obj["parent_tool_use_id"] is None
        if kind == "assistant":
            message = obj["message"]
            assert message["role"] == "assistant" and message["type"] == "message"
            assert isinstance(message["id"], str) and isinstance(message["model"], str)
            assert "stop_reason" in message and USAGE_KEYS <= message["usage"].keys()
            for block in message["content"]:
                assert block["type"] in {"text", "tool_use", "thinking", "redacted_thinking"}
                if block["type"] == "tool_use":
                    assert {"id", "name", "input"} <= block.keys()
        elif kind == "user":
            assert obj["message"]["role"] == "user"
            for block in obj["message"]["content"]:
                assert block["type"] == "tool_result" and isinstance(block["tool_use_id"], str)
        elif kind == "stream_event":
            assert obj["event"]["type"] in {
                "message_start", "message_delta", "message_stop",
                "content_block_start", "content_block_delta", "content_block_stop",
            }  # fmt: skip
    assert [obj["type"] for obj in lines].count("result") == 1
    return lines


def test_stream_json_reads_as_claude_codes_with_a_tool_call_a_denial_and_a_max_turns_stop(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(
        reply(text("Running it."), tool_use("Bash", {"command": "echo from-the-sandbox"})),
        reply(tool_use("Write", {"file_path": "not-allowed.txt", "content": "x"})),
        reply(tool_use("Bash", {"command": "echo third"})),
    )
    proc = tether_env.run(
        "-p", "run it", "--output-format", "stream-json", "--max-turns", "2",
        "--allowedTools", "Bash", "--disallowedTools", "Write", env=api_env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = read_claude_code_stream(proc.stdout)
    assert [line["type"] for line in lines] == ["system", "assistant", "user", "assistant", "user", "result"]
    assert not any(line["type"] == "stream_event" for line in lines), "partials only with --include-partial-messages"

    init, first, ran, second, denied, result = lines
    assert init["session_id"] == tether_env.session_events()[0]["session_id"]
    assert init["cwd"] == str(tether_env.project) and init["permissionMode"] == "default"
    assert {"Bash", "Read", "Write", "Edit", "Glob", "Grep"} <= set(init["tools"])
    assert init["model"] == first["message"]["model"]
    call = first["message"]["content"][1]
    assert first["message"]["content"][0] == {"type": "text", "text": "Running it."}
    assert (call["name"], call["input"]) == ("Bash", {"command": "echo from-the-sandbox"})
    assert first["message"]["stop_reason"] == "tool_use" and first["message"]["usage"]["output_tokens"] > 0
    (ran_block,) = ran["message"]["content"]
    assert ran_block["tool_use_id"] == call["id"] and ran_block["content"] == "from-the-sandbox"
    write = second["message"]["content"][0]
    (denied_block,) = denied["message"]["content"]
    assert denied_block["tool_use_id"] == write["id"] and denied_block["is_error"] is True

    assert result["subtype"] == "error_max_turns" and result["is_error"] is True and result["num_turns"] == 2
    assert result["permission_denials"] == [
        {"tool_name": "Write", "tool_use_id": write["id"], "tool_input": write["input"]}
    ]
    assert 0 < result["duration_api_ms"] <= result["duration_ms"]
    assert result["usage"]["output_tokens"] == sum(m["message"]["usage"]["output_tokens"] for m in (first, second))
    assert len(fake_api.message_requests) == 2


def test_partial_messages_are_the_api_stream_events_only_when_asked(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(reply(text("Streamed answer.")))
    proc = tether_env.run("-p", "hi", "--output-format", "stream-json", "--include-partial-messages", env=api_env)
    assert proc.returncode == 0, proc.stderr
    lines = read_claude_code_stream(proc.stdout)
    events = [line["event"] for line in lines if line["type"] == "stream_event"]
    assert [e["type"] for e in events][0] == "message_start" and events[-1] == {"type": "message_stop"}
    deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(deltas) == "Streamed answer."
    kinds = [line["type"] for line in lines]
    assert kinds.index("assistant") > max(i for i, k in enumerate(kinds) if k == "stream_event")
    assert lines[-1]["result"] == "Streamed answer." and lines[-1]["subtype"] == "success"


def test_json_result_on_success_max_turns_and_an_early_error_has_one_shape(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(reply(text("Fine.")), reply(tool_use("Bash", {"command": "true"})))
    success = tether_env.run("-p", "hi", "--output-format", "json", env=api_env)
    stopped = tether_env.run(
        "-p",
        "loop",
        "--output-format",
        "json",
        "--max-turns",
        "1",
        "--permission-mode",
        "bypassPermissions",
        env=api_env,
    )
    early = tether_env.run("-r", "nonexistent", "-p", "hi", "--output-format", "json", env=api_env)
    results = []
    for proc, code in ((success, 0), (stopped, 1), (early, 1)):
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        result = json.loads(proc.stdout)
        check_result(result)
        results.append(result)
    assert [r["subtype"] for r in results] == ["success", "error_max_turns", "error_during_execution"]
    assert len({frozenset(r) for r in results}) == 1, "every result has the same keys"
    assert results[0]["result"] == "Fine." and results[0]["duration_api_ms"] > 0
    assert results[2]["num_turns"] == 0 and set(results[2]["usage"].values()) == {0}
    assert "nonexistent" in results[2]["result"]
    assert results[2]["session_id"] not in {results[0]["session_id"], results[1]["session_id"]}
    assert len(fake_api.message_requests) == 2


def test_max_turns_stops_with_an_error_result(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(*[reply(tool_use("Bash", {"command": "true"}))] * 3)
    proc = tether_env.run(
        "-p",
        "loop",
        "--max-turns",
        "2",
        "--output-format",
        "json",
        "--permission-mode",
        "bypassPermissions",
        env=api_env,
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
    assert [texts(m) for m in body["messages"]] == [
        ["prompt A"],
        ["answer A"],
        [stdin_prompt],
        ["answer B"],
        ["prompt D"],
    ]

    listing = tether_env.run("-r", env=api_env)
    assert listing.returncode == 0, listing.stderr
    assert session_a[:8] in listing.stdout and session_c[:8] in listing.stdout
    assert len(fake_api.message_requests) == 3, "listing sessions asks the model nothing"


def read_lines_until(
    proc: subprocess.Popen[bytes], done: Callable[[str], bool], timeout: float
) -> tuple[list[str], bytes]:
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
        [*TETHER, "-p", "talk", "--output-format", "stream-json", "--include-partial-messages"],
        cwd=tether_env.project,
        env={**tether_env.env, **api_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    try:
        # The answer has begun to stream when its first text delta is out.
        def text_delta(line: str) -> bool:
            obj = json.loads(line)
            return obj["type"] == "stream_event" and obj["event"]["type"] == "content_block_delta"

        before, past = read_lines_until(proc, text_delta, WAIT_S)
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
    events = read_claude_code_stream("\n".join(before) + "\n" + (past + rest).decode())
    result = events[-1]
    assert result["subtype"] == "error_during_execution" and result["stop_reason"] == "interrupted"
    logged = [e["type"] for e in tether_env.session_events()]
    assert logged.count("interruption") == 1 and "assistant" not in logged


def test_an_unanswered_permission_request_headless_is_a_denial_the_model_sees_and_the_user_reads(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(
        reply(tool_use("Bash", {"command": "touch ran-anyway"})),
        reply(text("I could not run it.")),
    )
    proc = tether_env.run("-p", "make a file", env=api_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "I could not run it.\n"
    # Text mode: the denial is on stderr, with what was denied and why.
    (notice,) = [line for line in proc.stderr.splitlines() if "denied" in line]
    assert notice == "tether: denied Bash (touch ran-anyway): no one is there to approve it in a headless run"
    last = fake_api.message_requests[1].body["messages"][-1]
    (denied,) = [b for b in last["content"] if b.get("type") == "tool_result"]
    assert denied["is_error"] is True
    assert denied["content"].startswith(
        "This Bash call was not allowed: no one is there to approve it in a headless run. It did not run."
    )
    assert "((" not in denied["content"] and ".)" not in denied["content"]
    assert not (tether_env.project / "ran-anyway").exists()


def test_version_prints_the_package_version_without_credentials(tether_env: TetherEnv) -> None:
    from importlib.metadata import version

    proc = tether_env.run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"tether {version('tether')}\n"


def test_piped_stdin_is_the_prompt_when_p_has_no_text_and_follows_the_text_when_it_has(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(reply(text("one")), reply(text("two")))
    alone = tether_env.run("-p", input="what is here?\n", env=api_env)
    assert alone.returncode == 0, alone.stderr
    both = tether_env.run("-p", "summarize this log", input="line 1\nline 2\n", env=api_env)
    assert both.returncode == 0, both.stderr
    sent = [texts(r.body["messages"][-1]) for r in fake_api.message_requests]
    assert sent == [["what is here?\n"], ["summarize this log\n\nline 1\nline 2\n"]]


def test_p_with_no_text_and_nothing_piped_says_how_to_give_a_prompt(
    tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    proc = tether_env.run("-p", env=api_env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("tether: the prompt is empty") and "pipe it in" in proc.stderr
    assert tether_env.session_files() == []


def test_an_unpriced_model_works_and_says_cost_unknown_once(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    fake_api.script(reply(tool_use("Bash", {"command": "true"})), reply(text("done")))
    proc = tether_env.run(
        "-p",
        "go",
        "--model",
        "claude-unpriced-9",
        "--output-format",
        "json",
        "--permission-mode",
        "bypassPermissions",
        env=api_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("cost unknown") == 1 and "claude-unpriced-9" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["cost_known"] is False and result["total_cost_usd"] == 0.0


def test_the_default_model_is_priced(fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    fake_api.script(reply(text("hi")))
    proc = tether_env.run("-p", "hi", "--output-format", "json", env=api_env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "cost unknown" not in proc.stderr
    assert result["cost_known"] is True and result["total_cost_usd"] > 0
