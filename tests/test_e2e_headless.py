"""End to end: `tether -p` against the fake Messages API, tools in a real sandbox, both providers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tether_cli import TetherEnv, sandbox_host_cli

CONTENT = "hello from the sandbox, 42\n"


def _last_tool_result(body: dict) -> str:
    last = body["messages"][-1]
    assert last["role"] == "user"
    results = [b for b in last["content"] if b.get("type") == "tool_result"]
    assert results, f"no tool_result in {last}"
    content = results[-1]["content"]
    return content if isinstance(content, str) else "".join(c.get("text", "") for c in content)


def _script_write_then_cat(api: FakeMessagesAPI) -> None:
    api.script(
        reply(text("I'll write the file."), tool_use("Write", {"file_path": "hello.txt", "content": CONTENT})),
        reply(tool_use("Bash", {"command": "cat hello.txt", "description": "Show the file"})),
        lambda body: reply(text(f"The file says: {_last_tool_result(body).strip()}")),
    )


def _assert_write_then_cat(api: FakeMessagesAPI, tether_env: TetherEnv, out: str) -> None:
    result = json.loads(out)
    assert result["type"] == "result"
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == f"The file says: {CONTENT.strip()}"
    assert result["num_turns"] == 3
    assert result["usage"]["output_tokens"] > 0
    assert isinstance(result["total_cost_usd"], float)

    requests = api.message_requests
    assert len(requests) == 3
    assert "File created successfully" in _last_tool_result(requests[1].body)
    assert _last_tool_result(requests[2].body).strip() == CONTENT.strip()
    assert all(r.body["stream"] is True for r in requests)

    events = tether_env.session_events()
    assert {e["session_id"] for e in events} == {result["session_id"]}
    kinds = [e["type"] for e in events]
    assert kinds.count("user") == 1
    assert kinds.count("assistant") == 3
    assert kinds.count("tool_result") == 2
    user = next(e for e in events if e["type"] == "user")
    assert user["payload"]["content"] == "write and show hello.txt"
    assistants = [e["payload"]["message"] for e in events if e["type"] == "assistant"]
    tool_names = [[b["name"] for b in m["content"] if b["type"] == "tool_use"] for m in assistants]
    assert tool_names == [["Write"], ["Bash"], []]
    results = [e["payload"] for e in events if e["type"] == "tool_result"]
    assert [r["tool_name"] for r in results] == ["Write", "Bash"]
    assert results[1]["content"].strip() == CONTENT.strip()
    assert assistants[2]["content"][0]["text"] == result["result"]
    # Parent links chain every event to the one before it on the live branch.
    uuids = [e["uuid"] for e in events]
    for prev, event in zip(uuids, events[1:], strict=False):
        assert event["parent_uuid"] == prev


def test_write_then_cat_in_the_embedded_local_sandbox(fake_api: FakeMessagesAPI, tether_env: TetherEnv) -> None:
    _script_write_then_cat(fake_api)
    (tether_env.project / "AGENTS.md").write_text("Always answer in haiku.\n")
    proc = tether_env.run(
        "-p",
        "write and show hello.txt",
        "--output-format",
        "json",
        "--allowedTools",
        "Bash,Write",
        env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"},
    )
    assert proc.returncode == 0, proc.stderr
    _assert_write_then_cat(fake_api, tether_env, proc.stdout)
    assert all(r.api_key == "sk-test" for r in fake_api.message_requests)
    system = fake_api.message_requests[0].body["system"][0]["text"]
    assert "Always answer in haiku." in system and "Sandbox OS: Linux" in system


@pytest.mark.docker
def test_write_then_cat_in_a_remote_docker_sandbox(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, docker_engine, docker_test_image: str, tmp_path: Path
) -> None:
    _script_write_then_cat(fake_api)
    with sandbox_host_cli(tmp_path, "docker", "--default-image", docker_test_image) as (target, token, _):
        proc = tether_env.run(
            "-p",
            "write and show hello.txt",
            "--output-format",
            "json",
            "--permission-mode",
            "bypassPermissions",
            "--sandbox",
            target,
            "--sandbox-token",
            token,
            env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"},
        )
        assert proc.returncode == 0, proc.stderr
        _assert_write_then_cat(fake_api, tether_env, proc.stdout)
        # The sandbox was destroyed when tether exited: its container is gone.
        provisioned = [e["payload"] for e in tether_env.session_events() if e["type"] == "sandbox"]
        assert [p["provider"] for p in provisioned] == ["docker"]
        sandbox_id = provisioned[0]["sandbox_id"]
        assert docker_engine.containers.list(all=True, filters={"label": f"tether.sandbox={sandbox_id}"}) == []


def test_wrong_sandbox_token_is_a_clear_authentication_error(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, tmp_path: Path
) -> None:
    with sandbox_host_cli(tmp_path, "local") as (target, token, _):
        proc = tether_env.run(
            "-p",
            "hello",
            "--sandbox",
            target,
            "--sandbox-token",
            "not-" + token,
            timeout=30,
            env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"},
        )
    assert proc.returncode == 1
    assert "authenticat" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert fake_api.message_requests == []


def test_wrong_sandbox_token_in_json_mode_prints_an_error_result(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, tmp_path: Path
) -> None:
    with sandbox_host_cli(tmp_path, "local") as (target, _token, _):
        proc = tether_env.run(
            "-p",
            "hello",
            "--output-format",
            "json",
            "--sandbox",
            target,
            "--sandbox-token",
            "wrong",
            timeout=30,
            env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"},
        )
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["is_error"] is True and result["subtype"] == "error_during_execution"
    assert "authenticat" in result["result"].lower()


def test_missing_credentials_say_what_to_set(tether_env: TetherEnv) -> None:
    proc = tether_env.run("-p", "hello", timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ANTHROPIC_API_KEY" in lines[0] and "ANTHROPIC_BASE_URL" in lines[0]
    assert tether_env.session_files() == []


def test_text_output_prints_the_answer(fake_api: FakeMessagesAPI, tether_env: TetherEnv) -> None:
    fake_api.script(reply(text("Just an answer.")))
    proc = tether_env.run(
        "-p", "say something", env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Just an answer.\n"


def test_model_error_exits_1_with_the_reason(fake_api: FakeMessagesAPI, tether_env: TetherEnv) -> None:
    from tests.fixtures.fake_api import error

    fake_api.script(error(400, "invalid_request_error", "prompt is too long"))
    proc = tether_env.run(
        "-p",
        "hi",
        "--output-format",
        "json",
        env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"},
    )
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["is_error"] is True
    assert "prompt is too long" in result["result"]


@pytest.mark.docker
def test_a_container_killed_mid_session_is_replaced_and_the_session_goes_on(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, docker_engine, docker_test_image: str, tmp_path: Path
) -> None:
    killed: list[str] = []

    def kill_the_sandbox_then_ask_again(body: dict):
        # The first Bash call ran; now the container vanishes behind tether's back.
        for container in docker_engine.containers.list(filters={"label": "tether.sandbox"}):
            killed.append(container.labels["tether.sandbox"])
            container.remove(force=True)
        return reply(tool_use("Bash", {"command": "echo second"}))

    fake_api.script(
        reply(tool_use("Bash", {"command": "echo first"})),
        kill_the_sandbox_then_ask_again,
        reply(tool_use("Bash", {"command": "echo third"})),
        lambda body: reply(text("after: " + _last_tool_result(body).strip())),
    )
    with sandbox_host_cli(tmp_path, "docker", "--default-image", docker_test_image) as (target, token, _):
        proc = tether_env.run(
            "-p",
            "keep going",
            "--output-format",
            "json",
            "--permission-mode",
            "bypassPermissions",
            "--sandbox",
            target,
            "--sandbox-token",
            token,
            env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"},
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == "after: third"
    assert len(killed) == 1
    lost_result = _last_tool_result(fake_api.message_requests[2].body)
    assert "sandbox was lost" in lost_result and "new sandbox is being started" in lost_result
    events = [e["payload"] for e in tether_env.session_events() if e["type"] == "sandbox"]
    assert [e["event"] for e in events] == ["provisioned", "lost", "reprovisioned"]
    assert events[1]["sandbox_id"] == killed[0] == events[2]["replaces"]
    assert events[2]["sandbox_id"] != killed[0]


def test_credentials_never_reach_the_sandbox(fake_api: FakeMessagesAPI, tether_env: TetherEnv) -> None:
    secret = "sk-ant-secret-" + "7" * 24
    fake_api.script(
        reply(tool_use("Bash", {"command": "env; cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n'"})),
        lambda body: reply(text(_last_tool_result(body))),
    )
    proc = tether_env.run(
        "-p",
        "show the environment",
        "--output-format",
        "json",
        "--permission-mode",
        "bypassPermissions",
        env={
            "ANTHROPIC_BASE_URL": fake_api.base_url,
            "ANTHROPIC_API_KEY": secret,
            "TETHER_SANDBOX_TOKEN": "tok-" + "9" * 20,
        },
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)["result"]
    assert "PATH=" in seen, seen
    assert secret not in seen and "ANTHROPIC" not in seen and "9" * 20 not in seen
