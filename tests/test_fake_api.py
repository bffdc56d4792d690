"""The fake Messages API, checked through the real `anthropic` SDK over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import anthropic
import httpx2
import pytest

from tests.fixtures.fake_api import (
    FakeMessagesAPI,
    cut_off,
    cycle,
    error,
    hang,
    reply,
    stream_error,
    text,
    thinking,
    tool_use,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CLAUDE_CODE = shutil.which("claude") or next(
    (
        str(p)
        for p in [REPO_ROOT / "bench/.cache/claude/node_modules/@anthropic-ai/claude-code-linux-x64/claude"]
        if p.exists()
    ),
    None,
)
MODEL = "claude-test-model"
HELLO = [{"role": "user", "content": "hello"}]
BASH_TOOL = {
    "name": "Bash",
    "description": "Run a shell command.",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}


def async_client(api: FakeMessagesAPI, max_retries: int = 0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=api.base_url, api_key="sk-test", max_retries=max_retries)


async def stream_final(client: anthropic.AsyncAnthropic, messages=HELLO, **kwargs):
    """Stream one request to completion, bounded so a hang fails the test rather than stalls it."""

    async def run():
        async with client.messages.stream(model=MODEL, max_tokens=256, messages=messages, **kwargs) as stream:
            return await stream.get_final_message()

    return await asyncio.wait_for(run(), timeout=10)


async def test_streamed_text_reply_gives_content_and_usage(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(
        reply(
            text("Hello from the fake."), usage={"input_tokens": 42, "output_tokens": 7, "cache_read_input_tokens": 5}
        )
    )
    message = await stream_final(async_client(fake_api))
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello from the fake.")]
    assert message.stop_reason == "end_turn"
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (42, 7)
    assert message.usage.cache_read_input_tokens == 5
    assert message.usage.cache_creation_input_tokens == 0


async def test_estimated_usage_is_plausible(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("x" * 400)))
    message = await stream_final(async_client(fake_api), messages=[{"role": "user", "content": "y" * 4000}])
    assert 900 < message.usage.input_tokens < 1200
    assert 90 < message.usage.output_tokens < 130


async def test_tool_use_reply_parses_to_the_scripted_input(fake_api: FakeMessagesAPI) -> None:
    scripted_input = {"command": "ls -la /tmp", "nested": {"list": [1, 2, 3], "quote": 'a "b" ü'}}
    fake_api.script(reply(text("Looking."), tool_use("Bash", scripted_input, id="toolu_given"), tool_use("Bash", {})))
    message = await stream_final(async_client(fake_api), tools=[BASH_TOOL])
    assert message.stop_reason == "tool_use"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert [(c.id, c.name, c.input) for c in calls[:1]] == [("toolu_given", "Bash", scripted_input)]
    assert calls[1].input == {}
    assert calls[1].id.startswith("toolu_") and calls[1].id != "toolu_given"


async def test_generated_tool_ids_are_fresh_each_time_a_reply_is_served(fake_api: FakeMessagesAPI) -> None:
    fake_api.default = cycle(reply(tool_use("Bash", {"command": "true"})))
    client = async_client(fake_api)
    first = await stream_final(client)
    second = await stream_final(client)
    assert first.content[0].id != second.content[0].id
    assert fake_api.requests[0].served.blocks[0].id == first.content[0].id


async def test_thinking_block_round_trips(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(thinking("First, consider the question.", signature="sig-abc"), text("42")))
    message = await stream_final(async_client(fake_api))
    assert message.content[0].type == "thinking"
    assert (message.content[0].thinking, message.content[0].signature) == ("First, consider the question.", "sig-abc")
    assert message.content[1].text == "42"


async def test_text_deltas_concatenate_to_the_text(fake_api: FakeMessagesAPI) -> None:
    said = "The quick brown fox jumps over the lazy dog, twice over."
    fake_api.script(reply(text(said)))
    deltas: list[str] = []

    async def run():
        async with async_client(fake_api).messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
            async for chunk in stream.text_stream:
                deltas.append(chunk)

    await asyncio.wait_for(run(), timeout=10)
    assert len(deltas) >= 3
    assert "".join(deltas) == said


async def test_overloaded_without_retries_raises_overloaded_error(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(error(529, "overloaded_error", "Overloaded"))
    with pytest.raises(anthropic.OverloadedError) as raised:
        await stream_final(async_client(fake_api))
    assert raised.value.status_code == 529
    assert raised.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert raised.value.response.headers["request-id"].startswith("req_")


async def test_overloaded_with_one_retry_succeeds_on_the_next_reply(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(error(529, "overloaded_error", "Overloaded", retry_after=0.01), reply(text("second time lucky")))
    message = await stream_final(async_client(fake_api, max_retries=1))
    assert message.content[0].text == "second time lucky"
    assert len(fake_api.message_requests) == 2
    assert fake_api.message_requests[1].headers["x-stainless-retry-count"] == "1"


async def test_rate_limit_carries_retry_after(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(error(429, "rate_limit_error", "Slow down", retry_after=30))
    with pytest.raises(anthropic.RateLimitError) as raised:
        await stream_final(async_client(fake_api))
    assert raised.value.response.headers["retry-after"] == "30"


async def test_cut_off_stream_raises_instead_of_hanging(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(cut_off(reply(text("this message never finishes")), after_events=4))
    # A dropped connection mid-body surfaces as httpx2's transport error: the SDK does not wrap it.
    with pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)):
        await stream_final(async_client(fake_api))


async def test_error_event_mid_stream_raises_status_error(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(stream_error(reply(text("half of this")), after_events=4))
    with pytest.raises(anthropic.APIStatusError) as raised:
        await stream_final(async_client(fake_api))
    assert raised.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


async def test_hang_stalls_mid_stream_until_released(fake_api: FakeMessagesAPI) -> None:
    release = threading.Event()
    stalled = hang(reply(text("first part, then the rest")), after_events=4, release=release)
    fake_api.script(stalled)
    received: list[str] = []
    got_first_text = asyncio.Event()

    async def run():
        async with async_client(fake_api).messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
            async for chunk in stream.text_stream:
                received.append(chunk)
                got_first_text.set()
            return await stream.get_final_message()

    task = asyncio.create_task(run())
    assert await asyncio.to_thread(stalled.reached.wait, 10)
    await asyncio.wait_for(got_first_text.wait(), timeout=10)
    assert not task.done()
    release.set()
    message = await asyncio.wait_for(task, timeout=10)
    assert message.content[0].text == "first part, then the rest"
    assert len(received) >= 2


async def test_client_interrupting_a_hang_leaves_the_server_serving(fake_api: FakeMessagesAPI) -> None:
    stalled = hang(reply(text("never seen in full")), after_events=3, release=threading.Event())
    fake_api.script(stalled, reply(text("after the interrupt")))
    client = async_client(fake_api)
    task = asyncio.create_task(stream_final(client))
    assert await asyncio.to_thread(stalled.reached.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    message = await stream_final(client)
    assert message.content[0].text == "after the interrupt"


def test_stop_ends_hung_streams_and_idle_connections() -> None:
    api = FakeMessagesAPI().start()
    stalled = hang(reply(text("stuck")), after_events=2, release=threading.Event())
    api.script(reply(text("keep this connection alive")), stalled)
    idle_client = anthropic.Anthropic(base_url=api.base_url, api_key="sk-test", max_retries=0)
    idle_client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)  # its connection stays open, idle
    client = anthropic.Anthropic(base_url=api.base_url, api_key="sk-test", max_retries=0)
    outcome: list[BaseException | None] = []

    def stream_until_dropped() -> None:
        try:
            with client.messages.stream(model=MODEL, max_tokens=16, messages=HELLO) as stream:
                stream.get_final_message()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    streamer = threading.Thread(target=stream_until_dropped)
    streamer.start()
    assert stalled.reached.wait(10)
    stop_failures: list[Exception] = []

    def stop() -> None:
        try:
            api.stop()
        except Exception as exc:
            stop_failures.append(exc)

    stopper = threading.Thread(target=stop)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive(), "stop() blocked on a hung stream or an idle connection"
    assert stop_failures == []
    streamer.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)


async def test_requests_are_recorded_with_their_body(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("ok")))
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "run ls", "cache_control": {"type": "ephemeral"}}]}
    ]
    await stream_final(async_client(fake_api), messages=messages, tools=[BASH_TOOL], system="be brief")
    [recorded] = await fake_api.wait_for_requests_async(1, timeout=5)
    assert (recorded.method, recorded.path) == ("POST", "/v1/messages")
    assert recorded.body["model"] == MODEL
    assert recorded.body["messages"] == messages
    assert recorded.body["tools"] == [BASH_TOOL]
    assert recorded.body["system"] == "be brief"
    assert recorded.body["stream"] is True
    assert recorded.api_key == "sk-test"
    assert recorded.headers["anthropic-version"]


def test_wait_for_requests_waits_for_a_request_from_another_thread(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("ok")))
    client = anthropic.Anthropic(base_url=fake_api.base_url, api_key="sk-test", max_retries=0)
    sender = threading.Thread(
        target=client.messages.create, kwargs={"model": MODEL, "max_tokens": 16, "messages": HELLO}
    )
    sender.start()
    assert len(fake_api.wait_for_requests(1, timeout=10, path="/v1/messages")) == 1
    sender.join(timeout=10)
    with pytest.raises(TimeoutError, match="waited 0.05s for 2 request"):
        fake_api.wait_for_requests(2, timeout=0.05)


async def test_non_streaming_create_gets_the_whole_message(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("whole"), tool_use("Bash", {"command": "pwd"}, id="toolu_x")))
    message = await asyncio.wait_for(
        async_client(fake_api).messages.create(model=MODEL, max_tokens=64, messages=HELLO), timeout=10
    )
    assert message.content[0].text == "whole"
    assert (message.content[1].id, message.content[1].input) == ("toolu_x", {"command": "pwd"})
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens > 0


def test_sync_client_streams(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("sync works")), reply(text("and again on the same connection")))
    client = anthropic.Anthropic(base_url=fake_api.base_url, api_key="sk-test", max_retries=0, timeout=10)
    for expected in ("sync works", "and again on the same connection"):
        with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
            assert stream.get_final_text() == expected
            assert stream.request_id.startswith("req_")


async def test_a_callable_answers_from_the_request(fake_api: FakeMessagesAPI) -> None:
    def echo_tool_result(body: dict) -> object:
        result = body["messages"][-1]["content"][0]
        return reply(text(f"the tool said: {result['content']}"))

    fake_api.script(reply(tool_use("Bash", {"command": "echo hi"}, id="toolu_1")), echo_tool_result)
    client = async_client(fake_api)
    first = await stream_final(client)
    messages = HELLO + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "hi"}]},
    ]
    second = await stream_final(client, messages=messages)
    assert second.content[0].text == "the tool said: hi"


async def test_a_broken_callable_fails_loudly(fake_api: FakeMessagesAPI) -> None:
    def broken(body: dict) -> object:
        raise KeyError("no such thing")

    fake_api.script(broken, lambda body: None)
    with pytest.raises(anthropic.InternalServerError, match="responder raised KeyError"):
        await stream_final(async_client(fake_api))
    with pytest.raises(anthropic.InternalServerError, match="responder returned None"):
        await stream_final(async_client(fake_api))
    assert len(fake_api.failures) == 2 and "KeyError" in fake_api.failures[0]


async def test_running_out_of_script_answers_500_saying_so(fake_api: FakeMessagesAPI) -> None:
    with pytest.raises(anthropic.InternalServerError, match="script ran out"):
        await stream_final(async_client(fake_api))


async def test_unpaired_tool_use_is_rejected_as_the_api_would(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("never served")))
    messages = HELLO + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {}}]},
        {"role": "user", "content": "no result here"},
    ]
    with pytest.raises(anthropic.BadRequestError, match="toolu_9"):
        await stream_final(async_client(fake_api), messages=messages)
    assert fake_api.pending == 1


async def test_required_key_rejects_another_key() -> None:
    with FakeMessagesAPI(require_key="sk-right") as api:
        api.script(reply(text("for the right key")))
        wrong = anthropic.AsyncAnthropic(base_url=api.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await stream_final(wrong)
        right = anthropic.AsyncAnthropic(base_url=api.base_url, auth_token="sk-right", max_retries=0)
        message = await stream_final(right)
        assert message.content[0].text == "for the right key"
        assert [r.api_key for r in api.requests] == ["sk-wrong", "sk-right"]


async def test_count_tokens_and_probes(fake_api: FakeMessagesAPI) -> None:
    client = async_client(fake_api)
    counted = await asyncio.wait_for(client.messages.count_tokens(model=MODEL, messages=HELLO), timeout=10)
    assert counted.input_tokens > 0
    async with httpx2.AsyncClient(base_url=fake_api.base_url, timeout=10) as http:
        assert (await http.head("/")).status_code == 200
        assert (await http.get("/")).status_code == 200
        missing = await http.get("/v1/nowhere")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found_error"
        no_key = await http.post("/v1/messages", json={"model": MODEL, "max_tokens": 1, "messages": HELLO})
        assert no_key.status_code == 401
        assert no_key.json()["error"]["type"] == "authentication_error"
    assert fake_api.message_requests[-1].api_key is None


async def test_stream_is_shaped_like_the_api_on_the_wire(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("hi there"), tool_use("Bash", {"command": "ls"}, id="toolu_w")))
    async with httpx2.AsyncClient(base_url=fake_api.base_url, timeout=10) as http:
        async with http.stream(
            "POST",
            "/v1/messages?beta=true",
            headers={"x-api-key": "sk-test"},
            json={"model": MODEL, "max_tokens": 16, "messages": HELLO, "stream": True},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["transfer-encoding"] == "chunked"
            assert response.headers["request-id"].startswith("req_")
            raw = b"".join([chunk async for chunk in response.aiter_bytes()]).decode()
    assert fake_api.requests[0].query == "beta=true"
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    events = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[len("data: ") :])
        assert data["type"] == event_line[len("event: ") :]
        events.append(data)
    names = [e["type"] for e in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    start = events[0]["message"]
    assert (start["content"], start["stop_reason"], start["stop_sequence"], start["model"]) == ([], None, None, MODEL)
    assert set(start["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    tool_start = next(e for e in events if e["type"] == "content_block_start" and e["index"] == 1)
    assert tool_start["content_block"] == {"type": "tool_use", "id": "toolu_w", "name": "Bash", "input": {}}
    partials = [
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
    ]
    assert len(partials) >= 3 and json.loads("".join(partials)) == {"command": "ls"}
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


async def start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fixtures.fake_api",
        "--port",
        "0",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
    assert line.startswith("fake messages api listening on http://127.0.0.1:"), line
    return process, line.rsplit(" ", 1)[1].strip()


async def test_cli_serves_its_script_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {
                    "blocks": [
                        {"type": "text", "text": "from the file"},
                        {"type": "tool_use", "name": "Bash", "input": {"command": "true"}},
                    ]
                },
                {"error": {"status": 529, "type": "overloaded_error"}},
            ]
        )
    )
    process, base_url = await start_cli("--script", str(script))
    try:
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-test", max_retries=0)
        message = await stream_final(client)
        assert message.content[0].text == "from the file"
        assert message.content[1].input == {"command": "true"}
        assert message.stop_reason == "tool_use"
        with pytest.raises(anthropic.OverloadedError):
            await stream_final(client)
        with pytest.raises(anthropic.InternalServerError, match="script ran out"):
            await stream_final(client)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def test_cli_repeat_cycles_the_script(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(["one", {"blocks": [{"type": "text", "text": "two"}]}]))
    process, base_url = await start_cli("--script", str(script), "--repeat")
    try:
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-test", max_retries=0)
        said = [(await stream_final(client)).content[0].text for _ in range(5)]
        assert said == ["one", "two", "one", "two", "one"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


@pytest.mark.skipif(
    CLAUDE_CODE is None, reason="Claude Code is not installed (the benchmark installs it in bench/.cache)"
)
async def test_claude_code_runs_a_tool_turn_against_the_fake(fake_api: FakeMessagesAPI, tmp_path: Path) -> None:
    fake_api.script(
        reply(
            text("Let me run it."),
            tool_use("Bash", {"command": "echo from-the-tool", "description": "echo"}, id="toolu_cc"),
        ),
        reply(text("Done: the tool printed from-the-tool.")),
    )
    (tmp_path / "home").mkdir()
    (tmp_path / "project").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "ANTHROPIC_BASE_URL": fake_api.base_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "IS_SANDBOX": "1",
    }  # IS_SANDBOX: allowed as root
    claude = await asyncio.create_subprocess_exec(
        CLAUDE_CODE,
        "-p",
        "run the echo",
        "--output-format",
        "json",
        "--dangerously-skip-permissions",
        cwd=tmp_path / "project",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(claude.communicate(), timeout=90)
    assert claude.returncode == 0, err.decode()[-2000:]
    assert json.loads(out)["result"] == "Done: the tool printed from-the-tool."
    first, second = fake_api.message_requests
    assert first.query == "beta=true" and first.body["stream"] is True
    [tool_result] = [b for b in second.body["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert tool_result["tool_use_id"] == "toolu_cc"
    assert "from-the-tool" in json.dumps(tool_result["content"])
