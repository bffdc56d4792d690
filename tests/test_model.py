"""The model client against the fake Messages API: streaming, retries the user sees, clear errors."""

from __future__ import annotations

import pytest

from agent import events as ev
from agent.model import ModelClient, ModelError
from tests.fixtures.fake_api import FakeMessagesAPI, cut_off, error, reply, stream_error, text, thinking, tool_use

SYSTEM = [{"type": "text", "text": "system", "cache_control": {"type": "ephemeral"}}]
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


class Recorder:
    """Collects the events a call emits."""

    def __init__(self) -> None:
        self.events: list[ev.AgentEvent] = []

    async def __call__(self, event: ev.AgentEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def client(api: FakeMessagesAPI, **kwargs) -> ModelClient:
    return ModelClient(model="claude-sonnet-4-6", api_key="sk-test", base_url=api.base_url, base_delay=0.01, **kwargs)


async def respond(model: ModelClient, rec: Recorder, tools=()):
    try:
        return await model.respond(system=SYSTEM, messages=MESSAGES, tools=list(tools), emit=rec)
    finally:
        await model.close()


async def test_streams_text_and_returns_the_whole_message(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(thinking("let me see"), text("Hello there, this is a longer answer.")))
    rec = Recorder()
    response = await respond(client(fake_api), rec)
    assert "".join(e.text for e in rec.of(ev.TextDelta)) == "Hello there, this is a longer answer."
    assert len(rec.of(ev.TextDelta)) > 1, "the answer should stream in several deltas"
    assert "".join(e.text for e in rec.of(ev.ThinkingDelta)) == "let me see"
    assert [b["type"] for b in response.content] == ["thinking", "text"]
    assert response.content[0]["signature"]
    assert response.stop_reason == "end_turn"
    assert response.usage["output_tokens"] > 0
    assert response.cost_usd is not None and response.cost_usd > 0


async def test_tool_use_input_arrives_whole(fake_api: FakeMessagesAPI) -> None:
    args = {"command": "echo 'a long command' && ls -la /workspace", "timeout": 5000}
    fake_api.script(reply(tool_use("Bash", args)))
    response = await respond(client(fake_api), Recorder())
    assert response.stop_reason == "tool_use"
    block = response.content[0]
    assert block["type"] == "tool_use" and block["name"] == "Bash" and block["input"] == args


@pytest.mark.parametrize(
    "failure",
    [
        error(529, "overloaded_error", "Overloaded"),
        error(429, "rate_limit_error", "Slow down", retry_after=0),
        error(500, "api_error", "Internal"),
        cut_off(reply(text("partial answer that gets cut")), after_events=4),
        stream_error(reply(text("partial")), after_events=4),
    ],
    ids=["529", "429", "500", "cut-off", "stream-error"],
)
async def test_retryable_failures_are_retried_visibly(fake_api: FakeMessagesAPI, failure) -> None:
    fake_api.script(failure, reply(text("recovered")))
    rec = Recorder()
    response = await respond(client(fake_api), rec)
    assert response.content == [{"type": "text", "text": "recovered"}]
    statuses = rec.of(ev.Status)
    assert len(statuses) == 1
    assert "retrying in" in statuses[0].message and "attempt 2 of 5" in statuses[0].message
    assert len(fake_api.message_requests) == 2


async def test_retries_run_out_with_a_clear_error(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(*[error(529, "overloaded_error", "Overloaded")] * 3)
    rec = Recorder()
    with pytest.raises(ModelError, match=r"529 overloaded_error after 3 tries: Overloaded"):
        await respond(client(fake_api, max_attempts=3), rec)
    assert len(rec.of(ev.Status)) == 2


async def test_client_errors_are_not_retried(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(error(400, "invalid_request_error", "max_tokens: too large"))
    rec = Recorder()
    with pytest.raises(ModelError, match="400 invalid_request_error: max_tokens: too large"):
        await respond(client(fake_api), rec)
    assert rec.of(ev.Status) == []
    assert len(fake_api.message_requests) == 1


async def test_wrong_key_says_so(fake_api: FakeMessagesAPI) -> None:
    with FakeMessagesAPI(require_key="sk-right") as api:
        with pytest.raises(ModelError, match="refused the API key"):
            await respond(client(api), Recorder())


async def test_unknown_model_price_is_none_not_a_guess(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(reply(text("hi")))
    model = ModelClient(model="claude-unknown-9", api_key="sk-test", base_url=fake_api.base_url)
    response = await respond(model, Recorder())
    assert response.cost_usd is None


async def test_a_cut_stream_is_restarted_so_drivers_can_drop_its_partial_text(fake_api: FakeMessagesAPI) -> None:
    answer = "A fairly long answer that arrives in several pieces."
    fake_api.script(cut_off(reply(text(answer)), after_events=6), reply(text(answer)))
    rec = Recorder()
    await respond(client(fake_api), rec)
    kinds = [type(e) for e in rec.events]
    assert kinds.count(ev.StreamRestarted) == 1
    restart = kinds.index(ev.StreamRestarted)
    assert ev.TextDelta in kinds[:restart], "the cut stream should have shown some text first"
    after = "".join(e.text for e in rec.events[restart:] if isinstance(e, ev.TextDelta))
    assert after == answer


async def test_an_error_before_any_text_needs_no_restart(fake_api: FakeMessagesAPI) -> None:
    fake_api.script(error(529, "overloaded_error", "Overloaded"), reply(text("fine")))
    rec = Recorder()
    await respond(client(fake_api), rec)
    assert rec.of(ev.StreamRestarted) == []
