"""conversation(): the Messages API `messages` list rebuilt from a live path, always valid."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from session.conversation import INTERRUPTED_TOOL_RESULT, MISSING_START, build_messages
from session.events import Event
from session.tree import link_events, path_to
from tests.fixtures.session_support import (
    assert_valid_messages,
    assistant_payload,
    text_block,
    thinking_block,
    tool_result_payload,
    tool_use_block,
)

SESSION = "00000000-0000-4000-8000-000000000000"


def chain(*entries: tuple[str, dict[str, Any]]) -> list[Event]:
    """A live path: a meta event, then each entry below the one before."""
    events = [Event("meta", None, SESSION, "t", "meta", {"version": 1})]
    for kind, payload in entries:
        events.append(Event(str(uuid.uuid4()), events[-1].uuid, SESSION, "t", kind, payload))
    return events


def user(content: Any) -> tuple[str, dict[str, Any]]:
    """A user event entry."""
    return ("user", {"content": content})


def assistant(*blocks: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An assistant event entry."""
    return ("assistant", assistant_payload(*blocks))


def result(tool_use_id: str, content: str = "output", *, is_error: bool = False) -> tuple[str, dict[str, Any]]:
    """A tool_result event entry."""
    return ("tool_result", tool_result_payload(tool_use_id, content, is_error=is_error))


def test_a_plain_exchange() -> None:
    messages = build_messages(chain(user("hi"), assistant(text_block("hello")), user("bye")))
    assert messages == [
        {"role": "user", "content": [text_block("hi")]},
        {"role": "assistant", "content": [text_block("hello")]},
        {"role": "user", "content": [text_block("bye")]},
    ]


def test_results_come_first_in_call_order_then_the_prompt() -> None:
    messages = build_messages(
        chain(
            user("go"),
            assistant(tool_use_block("a"), tool_use_block("b")),
            result("b", "from b"),
            user("and then stop"),
            result("a", "from a"),
        )
    )
    assert_valid_messages(messages)
    assert [(block["type"], block.get("tool_use_id")) for block in messages[2]["content"]] == [
        ("tool_result", "a"),
        ("tool_result", "b"),
        ("text", None),
    ]


def test_unmatched_and_duplicate_results_are_dropped() -> None:
    messages = build_messages(
        chain(
            result("orphan"),
            user("go"),
            assistant(tool_use_block("a")),
            result("a", "first"),
            result("a", "second"),
            result("nobody-asked"),
            assistant(text_block("done")),
            result("a", "too late"),
        )
    )
    assert_valid_messages(messages)
    assert [block["content"] for block in messages[2]["content"]] == ["first"]
    assert len(messages) == 4


def test_an_unanswered_call_before_the_next_prompt_gets_an_error_result() -> None:
    messages = build_messages(chain(user("go"), assistant(tool_use_block("a")), user("what happened?")))
    assert_valid_messages(messages)
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "a", "content": INTERRUPTED_TOOL_RESULT, "is_error": True},
        text_block("what happened?"),
    ]


def test_two_responses_in_a_row_merge_unless_the_first_called_a_tool() -> None:
    merged = build_messages(chain(user("go"), assistant(text_block("one")), assistant(text_block("two"))))
    assert merged[1]["content"] == [text_block("one"), text_block("two")]
    split = build_messages(chain(user("go"), assistant(tool_use_block("a")), assistant(text_block("two"))))
    assert_valid_messages(split)
    assert [message["role"] for message in split] == ["user", "assistant", "user", "assistant"]


def test_blocks_the_api_would_reject_are_dropped() -> None:
    messages = build_messages(
        chain(
            user("   "),
            user([text_block(""), text_block("real")]),
            assistant(text_block(" \n"), thinking_block("unsigned", None), thinking_block("signed")),
            assistant(),
            result("x", ""),
        )
    )
    assert_valid_messages(messages)
    assert messages == [
        {"role": "user", "content": [text_block("real")]},
        {"role": "assistant", "content": [thinking_block("signed")]},
    ]


def test_empty_results_get_placeholder_content() -> None:
    messages = build_messages(chain(user("go"), assistant(tool_use_block("a")), result("a", "", is_error=True)))
    assert_valid_messages(messages)
    assert messages[2]["content"][0]["content"] == "(no output)"


def test_a_path_that_starts_with_the_assistant_gets_a_placeholder_prompt() -> None:
    messages = build_messages(chain(assistant(text_block("orphaned answer"))))
    assert messages[0] == {"role": "user", "content": [text_block(MISSING_START)]}
    assert_valid_messages(messages)


def test_only_the_last_compaction_counts_and_an_empty_summary_adds_nothing() -> None:
    messages = build_messages(
        chain(
            user("a"),
            ("compaction", {"summary": "first summary"}),
            user("b"),
            assistant(text_block("c")),
            ("compaction", {"summary": "second summary"}),
            assistant(text_block("d")),
        )
    )
    assert_valid_messages(messages)
    assert "second summary" in messages[0]["content"][0]["text"]
    assert "first summary" not in str(messages)
    assert build_messages(chain(user("a"), ("compaction", {"summary": ""}))) == []


def test_an_empty_session_has_no_messages() -> None:
    assert build_messages(chain()) == []
    assert build_messages([]) == []


def _random_payload(rng: random.Random, tool_ids: list[str]) -> tuple[str, dict[str, Any]]:
    """One random event: valid, odd, or damaged in the ways real logs can be."""
    kind = rng.choices(["user", "assistant", "tool_result", "compaction", "other"], weights=[5, 6, 6, 1, 2])[0]
    if kind == "user":
        if rng.random() < 0.3:
            blocks = [
                rng.choice(
                    [
                        text_block(""),
                        text_block(f"prompt {rng.random()}"),
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                        {"type": "tool_result", "tool_use_id": rng.choice(tool_ids or ["none"]), "content": "inline"},
                    ]
                )
                for _ in range(rng.randint(0, 3))
            ]
            return user(blocks)
        return user(rng.choice(["", "  ", f"prompt {rng.random()}", "two\nlines"]))
    if kind == "assistant":
        blocks = []
        for _ in range(rng.randint(0, 4)):
            choice = rng.random()
            if choice < 0.35:
                tool_id = f"toolu_{len(tool_ids)}"
                tool_ids.append(tool_id)
                blocks.append(tool_use_block(tool_id))
            elif choice < 0.6:
                blocks.append(text_block(rng.choice(["", " ", f"answer {rng.random()}"])))
            elif choice < 0.75:
                blocks.append(thinking_block("hmm", rng.choice([None, "sig"])))
            elif choice < 0.85:
                blocks.append({"type": "redacted_thinking", "data": "xyz"})
            else:
                blocks.append({"type": "tool_use", "name": "Bash", "input": {}})  # no id: damaged
        return assistant(*blocks)
    if kind == "tool_result":
        target = rng.choice(tool_ids[-4:] + ["unknown"]) if tool_ids else "unknown"
        return result(target, rng.choice(["", "out"]), is_error=rng.random() < 0.3)
    if kind == "compaction":
        return ("compaction", {"summary": rng.choice(["", "summary"])})
    return rng.choice(
        [
            ("interruption", {"reason": "user"}),
            ("title", {"title": "t", "source": "model"}),
            ("sandbox", {"event": "lost"}),
            ("future_type", {"x": 1}),
        ]
    )


@pytest.mark.parametrize("seed", range(400))
def test_random_histories_always_give_a_valid_conversation(seed: int) -> None:
    rng = random.Random(seed)
    tool_ids: list[str] = []
    events = [Event("meta", None, SESSION, "t", "meta", {"version": 1})]
    for _ in range(rng.randint(0, 40)):
        kind, payload = _random_payload(rng, tool_ids)
        # Mostly a straight line, sometimes a rewind to an earlier event (a fork).
        parent = rng.choice(events).uuid if rng.random() < 0.1 else events[-1].uuid
        events.append(Event(str(uuid.uuid4()), parent, SESSION, "t", kind, payload))
    linked = link_events(events, source=Path("random"))
    by_uuid = {event.uuid: event for event in linked}
    leaves = set(by_uuid) - {event.parent_uuid for event in linked}
    for leaf in leaves:
        path = path_to(leaf, by_uuid)
        messages = build_messages(path)
        assert_valid_messages(messages)
        # Nothing the user or the model said after the last compaction is lost.
        start = max((n + 1 for n, event in enumerate(path) if event.type == "compaction"), default=0)
        sent = str(messages)
        for event in path[start:]:
            if event.type == "user" and isinstance(event.payload["content"], str) and event.payload["content"].strip():
                assert repr(event.payload["content"])[1:-1] in sent
            if event.type == "assistant":
                for block in event.payload["message"]["content"]:
                    if block["type"] == "text" and block["text"].strip():
                        assert block["text"] in sent
