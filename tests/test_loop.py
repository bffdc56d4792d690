"""AgentLoop against the fake Messages API, with tools in a real local sandbox host.

Each test reads what the harness sent (the fake records every request, and
answers 400 where the real API would) and what it logged; the session log must
always rebuild the conversation the model last saw.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import events as ev
from agent.lease import SandboxLease
from agent.loop import COMPACT_PROMPT, AgentLoop
from agent.model import ModelClient
from agent.permissions import PermissionGate, PermissionSettings
from agent.sandbox_client import SandboxClient
from session.conversation import COMPACTION_PREAMBLE
from session.store import SessionStore
from tests.fixtures.fake_api import FakeMessagesAPI, cut_off, cycle, error, hang, reply, text, tool_use
from tests.fixtures.processes import host_pids, open_pidfds, started_sleeps, unique_seconds, wait_exited
from tests.fixtures.sandbox_host import RunningHost

WAIT_S = 10.0
"""Bound on every wait in these tests."""

Decide = Callable[[ev.PermissionRequest], ev.PermissionDecision]


@dataclass
class Driver:
    """What the TUI or the headless printer would be: records events, answers permission requests."""

    decide: Decide = lambda request: ev.PermissionDecision(allow=True)
    events: list[ev.AgentEvent] = field(default_factory=list)
    _waiters: list[tuple[Callable[[ev.AgentEvent], bool], asyncio.Future[ev.AgentEvent]]] = field(default_factory=list)

    async def __call__(self, event: ev.AgentEvent) -> None:
        """The loop's emit."""
        self.events.append(event)
        if isinstance(event, ev.PermissionRequest):
            event.future.set_result(self.decide(event))
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(event):
                future.set_result(event)

    async def wait_for(self, predicate: Callable[[ev.AgentEvent], bool]) -> ev.AgentEvent:
        """The first event from now on matching ``predicate`` (bounded by WAIT_S)."""
        future: asyncio.Future[ev.AgentEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        return await asyncio.wait_for(future, WAIT_S)

    def of(self, kind: type) -> list[Any]:
        """Every recorded event of one type."""
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Rig:
    """Everything a loop test touches."""

    api: FakeMessagesAPI
    lease: SandboxLease
    store: SessionStore
    project: Path
    made: list[AgentLoop] = field(default_factory=list)

    def loop(
        self,
        *,
        mode: str = "bypassPermissions",
        allow: tuple[str, ...] = (),
        deny: tuple[str, ...] = (),
        decide: Decide | None = None,
        **options: Any,
    ) -> tuple[AgentLoop, Driver]:
        """A loop on a new session, with a permission gate in ``mode`` and a recording driver."""
        driver = Driver() if decide is None else Driver(decide)
        gate = PermissionGate(
            mode,
            PermissionSettings.load([], allow=list(allow), deny=list(deny)),
            self.project,
            lambda: self.lease.workdir,
        )
        model = ModelClient(api_key="sk-test", base_url=self.api.base_url, base_delay=0.01)
        loop = AgentLoop(
            model=model,
            lease=self.lease,
            log=self.store.create(self.project),
            project_dir=self.project,
            emit=driver,
            gate=gate,
            **options,
        )
        self.made.append(loop)
        return loop, driver

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every /v1/messages request so far."""
        return [r.body for r in self.api.message_requests]

    def logged(self, loop: AgentLoop) -> list[Any]:
        """The loop's session log as a fresh reader sees it."""
        return self.store.open(loop.log.session_id).events()

    def rebuilt(self, loop: AgentLoop) -> list[dict[str, Any]]:
        """The conversation a resumed session would send, rebuilt from the log on disk."""
        return self.store.open(loop.log.session_id).conversation()


@pytest.fixture
async def rig(fake_api: FakeMessagesAPI, local_sandbox_host: RunningHost, tmp_path: Path) -> AsyncIterator[Rig]:
    """A fake API, a provisioned local sandbox and a session store in tmp_path."""
    project = tmp_path / "project"
    project.mkdir()
    client = SandboxClient(local_sandbox_host.target, local_sandbox_host.token)
    lease = SandboxLease(client, host=local_sandbox_host.target, recipe=local_sandbox_host.recipe)
    await lease.ready()
    store = SessionStore(home=tmp_path / "home")
    rig = Rig(fake_api, lease, store, project)
    try:
        yield rig
    finally:
        for loop in rig.made:
            await loop.model.close()
        store.close()
        await lease.release()
        await client.close()
    assert fake_api.failures == []


# --------------------------------------------------------------------------- helpers


def plain(value: Any) -> Any:
    """``value`` without cache_control markers (what the log holds)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def assert_alternates(messages: list[dict[str, Any]]) -> None:
    """Roles go user, assistant, user... starting and ending with the user."""
    roles = [m["role"] for m in messages]
    assert roles[0] == "user" and roles[-1] == "user", roles
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles


def results_in(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of a user message."""
    return [b for b in message["content"] if b.get("type") == "tool_result"]


def texts_in(message: dict[str, Any]) -> list[str]:
    """The text of a message's text blocks."""
    content = message["content"]
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content if b.get("type") == "text"]


def assert_log_rebuilds(rig: Rig, loop: AgentLoop, body: dict[str, Any]) -> None:
    """The log on disk rebuilds exactly the messages of ``body``, followed by the answer to it."""
    rebuilt = rig.rebuilt(loop)
    sent = plain(body["messages"])
    assert rebuilt[: len(sent)] == sent
    assert [m["role"] for m in rebuilt[len(sent) :]] == ["assistant"]


def count_cache_control(value: Any) -> int:
    """How many blocks carry cache_control."""
    if isinstance(value, dict):
        return ("cache_control" in value) + sum(count_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_cache_control(v) for v in value)
    return 0


def tool_ids(body: dict[str, Any], index: int = -2) -> list[str]:
    """The ids of the tool_use blocks of the assistant message at ``index`` (default: the one before the last message)."""
    return [b["id"] for b in body["messages"][index]["content"] if b.get("type") == "tool_use"]


# --------------------------------------------------------------------------- conversation


async def test_two_prompts_carry_the_whole_history_with_alternating_roles(rig: Rig) -> None:
    rig.api.script(
        reply(text("Let me look."), tool_use("Bash", {"command": "echo first-output"})),
        reply(text("It printed first-output.")),
        reply(text("Second answer.")),
    )
    loop, driver = rig.loop()
    first = await loop.run("first prompt")
    assert (first.result, first.stop_reason, first.num_turns, first.is_error) == (
        "It printed first-output.",
        "end_turn",
        2,
        False,
    )
    second = await loop.run("second prompt")
    assert second.result == "Second answer." and second.num_turns == 1

    bodies = rig.bodies()
    assert len(bodies) == 3
    for body in bodies:
        assert_alternates(body["messages"])
    last = bodies[2]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert texts_in(last[0]) == ["first prompt"]
    assert results_in(last[2])[0]["content"] == "first-output"
    assert results_in(last[2])[0]["tool_use_id"] == tool_ids(bodies[2], 1)[0]
    assert texts_in(last[3]) == ["It printed first-output."]
    assert texts_in(last[4]) == ["second prompt"]
    # Each request extends the one before it: the prefix is stable, so the cache can hit.
    assert plain(bodies[1]["messages"]) == plain(last[:3])
    assert_log_rebuilds(rig, loop, bodies[2])

    kinds = [type(e).__name__ for e in driver.events]
    assert kinds.count("TurnFinished") == 2 and kinds.count("ToolStarted") == 1
    assert "".join(e.text for e in driver.of(ev.TextDelta)).startswith("Let me look.It printed first-output.")


async def test_parallel_tool_calls_in_one_answer_are_answered_in_call_order(rig: Rig) -> None:
    await rig.lease.client.write_file(rig.lease.sandbox_id, f"{rig.lease.workdir}/a.txt", b"alpha\n")
    rig.api.script(
        reply(
            tool_use("Read", {"file_path": "a.txt"}),
            tool_use("Grep", {"pattern": "alpha"}),
            tool_use("Bash", {"command": "echo from-bash"}),
            tool_use("Glob", {"pattern": "*.txt"}),
        ),
        reply(text("done")),
    )
    loop, driver = rig.loop()
    done = await loop.run("look around")
    assert done.result == "done"
    body = rig.bodies()[1]
    results = results_in(body["messages"][-1])
    assert [r["tool_use_id"] for r in results] == tool_ids(body)
    assert [r["content"] for r in results] == [
        "     1\talpha",
        f"Found 1 file\n{rig.lease.workdir}/a.txt",
        "from-bash",
        f"{rig.lease.workdir}/a.txt",
    ]
    assert not any(r.get("is_error") for r in results)
    order = [
        (type(e).__name__, e.tool_use_id) for e in driver.events if isinstance(e, ev.ToolStarted | ev.ToolFinished)
    ]
    assert [kind for kind, _ in order[:4]] == ["ToolStarted", "ToolStarted", "ToolFinished", "ToolFinished"]
    assert_log_rebuilds(rig, loop, body)


# --------------------------------------------------------------------------- model failures


async def test_overloaded_then_success_retries_with_a_visible_status(rig: Rig) -> None:
    rig.api.script(error(529, "overloaded_error", "Overloaded"), reply(text("made it")))
    loop, driver = rig.loop()
    done = await loop.run("hi")
    assert done.result == "made it" and not done.is_error
    assert len(rig.api.message_requests) == 2
    statuses = [s.message for s in driver.of(ev.Status)]
    assert any("overloaded" in s and "retrying" in s for s in statuses), statuses
    assert [e.type for e in rig.logged(loop)].count("assistant") == 1


async def test_a_stream_cut_off_mid_message_is_retried(rig: Rig) -> None:
    rig.api.script(
        cut_off(reply(text("This answer will be cut off somewhere in the middle.")), after_events=5),
        reply(text("Whole answer.")),
    )
    loop, driver = rig.loop()
    done = await loop.run("hi")
    assert done.result == "Whole answer." and not done.is_error
    assert len(rig.api.message_requests) == 2
    assert any("retrying" in s.message for s in driver.of(ev.Status))
    assistants = [e.payload["message"] for e in rig.logged(loop) if e.type == "assistant"]
    assert [m["content"] for m in assistants] == [[{"type": "text", "text": "Whole answer."}]]


async def test_an_error_after_the_last_retry_ends_the_turn_with_a_clear_message(rig: Rig) -> None:
    rig.api.script(*[error(529, "overloaded_error", "Overloaded")] * 2)
    loop, driver = rig.loop()
    loop.model.max_attempts = 2
    done = await loop.run("hi")
    assert done.is_error and "529" in done.result and "Overloaded" in done.result and "Traceback" not in done.result
    assert driver.of(ev.ErrorEvent)
    rig.api.script(reply(text("back")))
    again = await loop.run("again")
    assert again.result == "back"
    assert_alternates(rig.bodies()[-1]["messages"])


# --------------------------------------------------------------------------- interrupts


async def test_interrupt_mid_stream_ends_the_turn_and_the_next_prompt_works(rig: Rig) -> None:
    release = threading.Event()
    stalled = hang(reply(text("A long answer that never finishes streaming.")), after_events=5, release=release)
    rig.api.script(stalled)
    loop, driver = rig.loop()
    try:
        turn = asyncio.create_task(loop.run("tell me a story"))
        assert await asyncio.to_thread(stalled.reached.wait, WAIT_S)
        assert loop.interrupt()
        done = await asyncio.wait_for(turn, WAIT_S)
    finally:
        release.set()
    assert done.stop_reason == "interrupted" and done.is_error
    assert not loop.interrupt(), "nothing runs any more"
    logged = rig.logged(loop)
    assert [e.type for e in logged].count("interruption") == 1
    assert "assistant" not in [e.type for e in logged]

    rig.api.script(reply(text("Fine.")))
    again = await loop.run("never mind")
    assert again.result == "Fine." and not again.is_error
    body = rig.bodies()[-1]
    assert_alternates(body["messages"])
    assert texts_in(body["messages"][0]) == ["tell me a story", "never mind"]
    assert_log_rebuilds(rig, loop, body)


async def test_interrupt_mid_tool_kills_the_command_and_answers_the_call(rig: Rig) -> None:
    seconds = unique_seconds()
    rig.api.script(
        reply(
            tool_use("Bash", {"command": "echo finished-first"}),
            tool_use("Bash", {"command": f"{started_sleeps(seconds)}; wait"}),
        )
    )
    loop, driver = rig.loop()
    turn = asyncio.create_task(loop.run("run the long thing"))
    await driver.wait_for(lambda e: isinstance(e, ev.ToolOutput) and "started" in e.text)
    pidfds = open_pidfds(host_pids(["sleep", seconds]))
    assert pidfds, "the sleep is not visible from the host"
    assert loop.interrupt()
    done = await asyncio.wait_for(turn, WAIT_S)
    assert done.stop_reason == "interrupted"
    await wait_exited(pidfds)

    first, second = driver.of(ev.ToolFinished)
    assert (first.is_error, first.content) == (False, "finished-first")
    assert second.is_error and "nterrupted" in second.content
    types = [e.type for e in rig.logged(loop)]
    assert types.count("interruption") == 1 and types.count("tool_result") == 2

    rig.api.script(reply(text("ok")))
    again = await loop.run("what happened?")
    assert again.result == "ok"
    body = rig.bodies()[-1]
    assert_alternates(body["messages"])
    answers = results_in(body["messages"][-1])
    assert [a["tool_use_id"] for a in answers] == [first.tool_use_id, second.tool_use_id]
    # The call that finished keeps its real result; only the interrupted one is an error.
    assert (answers[0]["content"], answers[0].get("is_error")) == ("finished-first", None)
    assert answers[1]["is_error"] is True and "nterrupted" in answers[1]["content"]
    assert "Its output until then:\nstarted" in answers[1]["content"], "the partial output reaches the model"
    assert texts_in(body["messages"][-1]) == ["what happened?"]
    assert_log_rebuilds(rig, loop, body)


# --------------------------------------------------------------------------- permissions


def _last_results(rig: Rig) -> list[dict[str, Any]]:
    return results_in(rig.bodies()[-1]["messages"][-1])


async def test_default_mode_asks_and_a_denial_with_a_reason_reaches_the_model(rig: Rig) -> None:
    rig.api.script(
        reply(tool_use("Read", {"file_path": "missing.txt"}), tool_use("Bash", {"command": "rm -rf build"})),
        reply(text("Understood.")),
    )
    loop, driver = rig.loop(
        mode="default", decide=lambda r: ev.PermissionDecision(allow=False, reason="not on my machine")
    )
    done = await loop.run("clean up")
    assert done.result == "Understood."
    asked = driver.of(ev.PermissionRequest)
    assert [(r.name, r.input) for r in asked] == [("Bash", {"command": "rm -rf build"})]
    read, bash = _last_results(rig)
    assert read["is_error"] and "does not exist" in read["content"]
    assert bash["is_error"] and "not on my machine" in bash["content"] and "did not run" in bash["content"]


async def test_allow_once_and_allow_always(rig: Rig) -> None:
    rig.api.script(
        reply(tool_use("Bash", {"command": "echo once"})),
        reply(tool_use("Bash", {"command": "echo once"})),
        reply(text("done")),
    )
    loop, driver = rig.loop(mode="default", decide=lambda r: ev.PermissionDecision(allow=True, always=True))
    await loop.run("twice")
    assert len(driver.of(ev.PermissionRequest)) == 1, "the second identical call is allowed by the remembered rule"
    assert (rig.project / ".tether" / "settings.toml").read_text().count("Bash(echo:*)") == 1
    assert _last_results(rig)[0]["content"] == "once"


async def test_accept_edits_mode_writes_without_asking_but_asks_for_bash(rig: Rig) -> None:
    rig.api.script(
        reply(
            tool_use("Write", {"file_path": "notes.md", "content": "hi\n"}),
            tool_use("Bash", {"command": "cat notes.md"}),
        ),
        reply(text("ok")),
    )
    loop, driver = rig.loop(mode="acceptEdits", decide=lambda r: ev.PermissionDecision(allow=False))
    await loop.run("write notes")
    assert [r.name for r in driver.of(ev.PermissionRequest)] == ["Bash"]
    write, bash = _last_results(rig)
    assert not write.get("is_error") and "created" in write["content"]
    assert bash["is_error"] and "did not allow" in bash["content"]
    data = await rig.lease.client.read_file(rig.lease.sandbox_id, f"{rig.lease.workdir}/notes.md")
    assert data == b"hi\n"


async def test_plan_mode_tells_the_model_and_refuses_anything_but_reading(rig: Rig) -> None:
    rig.api.script(
        reply(
            tool_use("Glob", {"pattern": "*"}),
            tool_use("Bash", {"command": "touch made-in-plan-mode"}),
            tool_use("Write", {"file_path": "x", "content": "x"}),
        ),
        reply(text("Here is my plan.")),
    )
    loop, driver = rig.loop(mode="plan")
    await loop.run("plan it")
    system = rig.bodies()[0]["system"]
    assert "Plan mode is on" in "".join(block["text"] for block in system)
    glob, bash, write = _last_results(rig)
    assert not glob.get("is_error")
    for refused in (bash, write):
        assert refused["is_error"] and "plan mode" in refused["content"]
    assert driver.of(ev.PermissionRequest) == []
    info = await rig.lease.client.stat(rig.lease.sandbox_id, f"{rig.lease.workdir}/made-in-plan-mode")
    assert not info.exists


async def test_bypass_mode_asks_nothing_but_deny_rules_still_win(rig: Rig) -> None:
    rig.api.script(
        reply(
            tool_use("Bash", {"command": "echo free"}),
            tool_use("Bash", {"command": "rm -rf /workspace/x"}),
            tool_use("Read", {"file_path": "secret/key.pem"}),
            tool_use("Read", {"file_path": "/workspace/./lib/../secret/key.pem"}),
        ),
        reply(text("ok")),
    )
    loop, driver = rig.loop(mode="bypassPermissions", deny=("Bash(rm:*)", "Read(secret/**)"))
    await loop.run("go")
    assert driver.of(ev.PermissionRequest) == []
    free, rm, *secrets = _last_results(rig)
    assert free["content"] == "free"
    assert rm["is_error"] and "Bash(rm:*)" in rm["content"]
    for secret in secrets:
        assert secret["is_error"] and "Read(secret/**)" in secret["content"], secret


async def test_allow_rules_skip_the_question_in_default_mode(rig: Rig) -> None:
    rig.api.script(
        reply(tool_use("Bash", {"command": "echo allowed"}), tool_use("Bash", {"command": "echo asked"})),
        reply(text("ok")),
    )
    loop, driver = rig.loop(
        mode="default", allow=("Bash(echo allowed)",), decide=lambda r: ev.PermissionDecision(allow=False)
    )
    await loop.run("go")
    assert [r.input["command"] for r in driver.of(ev.PermissionRequest)] == ["echo asked"]
    allowed, asked = _last_results(rig)
    assert allowed["content"] == "allowed" and asked["is_error"]


# --------------------------------------------------------------------------- limits, compaction, caching


async def test_max_turns_stops_the_loop_and_leaves_a_valid_conversation(rig: Rig) -> None:
    rig.api.default = cycle(reply(tool_use("Bash", {"command": "true"})))
    loop, _ = rig.loop(max_turns=2)
    done = await loop.run("loop forever")
    assert done.is_error and done.stop_reason == "max_turns" and done.num_turns == 2
    assert "--max-turns 2" in done.result
    assert len(rig.api.message_requests) == 2

    rig.api.default = reply(text("stopped"))
    again = await loop.run("stop now")
    assert again.result == "stopped"
    assert_alternates(rig.bodies()[-1]["messages"])
    assert_log_rebuilds(rig, loop, rig.bodies()[-1])


async def test_compact_command_summarises_and_the_next_request_starts_from_the_summary(rig: Rig) -> None:
    rig.api.script(
        reply(tool_use("Bash", {"command": "echo work"})),
        reply(text("Worked.")),
        reply(text("SUMMARY: the user asked for work; echo work ran.")),
        reply(text("Continuing.")),
    )
    loop, driver = rig.loop()
    await loop.run("do work")
    summarised = await loop.run("/compact keep the file names")
    assert summarised.result == "SUMMARY: the user asked for work; echo work ran." and not summarised.is_error
    await loop.run("next step")

    bodies = rig.bodies()
    summary_request = bodies[2]
    assert summary_request["tool_choice"] == {"type": "none"}
    assert summary_request["tools"] == bodies[0]["tools"], "same tools: the summary reuses the cache"
    ask = texts_in(summary_request["messages"][-1])[-1]
    assert ask.startswith(COMPACT_PROMPT) and "keep the file names" in ask
    assert_alternates(summary_request["messages"])

    after = bodies[3]["messages"]
    assert len(after) == 1
    assert texts_in(after[0]) == [COMPACTION_PREAMBLE + "SUMMARY: the user asked for work; echo work ran.", "next step"]
    compactions = [e.payload for e in rig.logged(loop) if e.type == "compaction"]
    assert compactions == [
        {"summary": "SUMMARY: the user asked for work; echo work ran.", "instructions": "keep the file names"}
    ]
    assert any("ompact" in s.message for s in driver.of(ev.Status))
    assert_log_rebuilds(rig, loop, bodies[-1])
    # The full history stays in the log.
    assert [e.payload["content"] for e in rig.logged(loop) if e.type == "user"] == ["do work", "next step"]


async def test_automatic_compaction_when_the_context_passes_the_threshold(rig: Rig) -> None:
    rig.api.script(
        reply(text("A big answer."), usage={"input_tokens": 150_000, "cache_read_input_tokens": 20_000}),
        reply(text("SUMMARY: one big answer so far.")),
        reply(text("Answer after compaction.")),
    )
    loop, driver = rig.loop(compact_at_tokens=160_000)
    await loop.run("first")
    done = await loop.run("second")
    assert done.result == "Answer after compaction."

    bodies = rig.bodies()
    assert len(bodies) == 3
    assert bodies[1]["tool_choice"] == {"type": "none"}
    assert texts_in(bodies[1]["messages"][-1])[-1] == COMPACT_PROMPT
    after = bodies[2]["messages"]
    assert texts_in(after[0]) == [COMPACTION_PREAMBLE + "SUMMARY: one big answer so far.", "second"], (
        "the new prompt follows the summary"
    )
    assert [e.type for e in rig.logged(loop)].count("compaction") == 1
    assert_log_rebuilds(rig, loop, bodies[-1])


async def test_prompt_caching_marks_the_stable_prefix(rig: Rig) -> None:
    rig.api.script(
        reply(tool_use("Bash", {"command": "echo one"}), tool_use("Read", {"file_path": "nothing"})),
        reply(text("first done")),
        reply(text("second done")),
        reply(text("SUMMARY")),
        reply(text("third done")),
    )
    loop, _ = rig.loop()
    await loop.run("one")
    await loop.run("two")
    await loop.run("/compact")
    await loop.run("three")
    bodies = rig.bodies()
    assert len(bodies) == 5
    tools = json.dumps(bodies[0]["tools"])
    for body in bodies:
        assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
        last_block = body["messages"][-1]["content"][-1]
        assert last_block["cache_control"] == {"type": "ephemeral"}
        assert json.dumps(body["tools"]) == tools
        assert count_cache_control(body) <= 4
        # Only the newest message carries the breakpoint; older ones are sent as they were.
        assert count_cache_control(body["messages"][:-1]) == 0
    assert bodies[0]["system"] == bodies[4]["system"]


async def test_a_denial_by_the_user_ends_the_turn_and_the_reason_reaches_the_model_with_the_next_prompt(
    rig: Rig,
) -> None:
    rig.api.script(
        reply(tool_use("Bash", {"command": "rm -rf build"}), tool_use("Bash", {"command": "echo after"})),
        reply(text("Fine, I will not.")),
    )
    loop, driver = rig.loop(
        mode="default",
        decide=lambda r: ev.PermissionDecision(allow=False, reason="keep the build", ends_turn=True),
    )
    done = await loop.run("clean up")
    assert done.stop_reason == "user_stopped" and not done.is_error
    assert len(rig.api.message_requests) == 1, "the model did not carry on after the denial"
    assert len(driver.of(ev.PermissionRequest)) == 1, "the rest of the batch was not asked about"
    await loop.run("leave it")
    last = rig.bodies()[-1]["messages"][-1]
    denied, skipped = results_in(last)
    assert "keep the build" in denied["content"] and "stopped the turn" in denied["content"]
    assert skipped["is_error"] and "Not run" in skipped["content"]
    assert last["content"][-1]["text"] == "leave it"


async def test_exit_plan_mode_is_offered_in_plan_mode_and_an_approval_switches_the_mode(rig: Rig) -> None:
    rig.api.script(
        reply(tool_use("ExitPlanMode", {"plan": "1. write notes.md"})),
        reply(tool_use("Write", {"file_path": "notes.md", "content": "hi\n"})),
        reply(text("Done.")),
    )
    loop, driver = rig.loop(mode="plan")

    async def approve() -> None:
        asked = await driver.wait_for(lambda e: isinstance(e, ev.PlanApprovalRequest))
        assert isinstance(asked, ev.PlanApprovalRequest) and asked.plan == "1. write notes.md"
        asked.future.set_result(ev.PlanDecision(approve=True, mode="acceptEdits"))

    approving = asyncio.ensure_future(approve())
    done = await loop.run("plan it")
    await approving
    assert done.result == "Done."
    first, second, _ = rig.bodies()
    assert "ExitPlanMode" in [t["name"] for t in first["tools"]]
    assert "Plan mode is on" in first["system"][0]["text"]
    assert "ExitPlanMode" not in [t["name"] for t in second["tools"]]
    assert "Plan mode is on" not in second["system"][0]["text"]
    assert "approved" in results_in(second["messages"][-1])[0]["content"]
    assert loop.gate is not None and loop.gate.mode == "acceptEdits"
    assert [e.mode for e in driver.of(ev.PermissionModeChanged)] == ["acceptEdits"]
    written = results_in(rig.bodies()[-1]["messages"][-1])[0]
    assert "created successfully" in written["content"], "acceptEdits let the Write run without asking"
    assert not driver.of(ev.PermissionRequest)


async def test_keep_planning_tells_the_model_and_without_feedback_hands_the_prompt_back(rig: Rig) -> None:
    rig.api.script(
        reply(tool_use("ExitPlanMode", {"plan": "v1"})),
        reply(tool_use("ExitPlanMode", {"plan": "v2"})),
    )
    loop, driver = rig.loop(mode="plan")
    answers = iter([ev.PlanDecision(approve=False, feedback="add tests"), ev.PlanDecision(approve=False)])

    async def answer() -> None:
        for _ in range(2):
            asked = await driver.wait_for(lambda e: isinstance(e, ev.PlanApprovalRequest))
            assert isinstance(asked, ev.PlanApprovalRequest)
            asked.future.set_result(next(answers))

    answering = asyncio.ensure_future(answer())
    done = await loop.run("plan it")
    await answering
    assert done.stop_reason == "user_stopped"
    assert len(rig.api.message_requests) == 2
    feedback = results_in(rig.bodies()[1]["messages"][-1])[0]
    assert "keep planning" in feedback["content"] and "add tests" in feedback["content"]
    assert loop.gate is not None and loop.gate.mode == "plan"
