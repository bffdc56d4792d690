"""Stream events folded into the whole message, as the Messages API sends them (its documented event shapes)."""

from __future__ import annotations

import pytest

from agent.message_stream import MessageAccumulator, StreamFormatError, request_block


def start(**usage: int) -> dict:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1, **usage},
        },
    }


def fold(*events: dict) -> tuple[MessageAccumulator, list[tuple[str, str]]]:
    folded = MessageAccumulator()
    shown = [piece for event in events if (piece := folded.add(event)) is not None]
    return folded, shown


def test_text_thinking_and_a_tool_call_fold_into_the_blocks_a_request_carries_back() -> None:
    folded, shown = fold(
        start(cache_read_input_tokens=7),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "see"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig=="}},
        {"type": "content_block_stop", "index": 0},
        {"type": "ping"},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "", "citations": None}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}},
        },
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"comm'}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'and": "ls"}'}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 42}},
        {"type": "message_stop"},
    )  # fmt: skip
    assert shown == [("thinking", "let me "), ("thinking", "see"), ("text", "Hello"), ("text", " there")]
    assert folded.content() == [
        {"type": "thinking", "thinking": "let me see", "signature": "sig=="},
        {"type": "text", "text": "Hello there"},
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
    ]
    assert folded.stop_reason == "tool_use" and folded.stopped
    # message_delta's counts replace message_start's; what it does not carry is kept.
    assert folded.usage == {"input_tokens": 25, "output_tokens": 42, "cache_read_input_tokens": 7}


def test_a_tool_call_without_input_deltas_has_empty_input() -> None:
    folded, _ = fold(
        start(),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "Ls", "input": {}}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"},
    )  # fmt: skip
    assert folded.content() == [{"type": "tool_use", "id": "t", "name": "Ls", "input": {}}]


def test_a_stream_cut_before_message_stop_is_not_whole() -> None:
    folded, shown = fold(
        start(),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    )
    assert shown == [("text", "Hel")] and not folded.stopped


def test_citations_are_collected_on_their_block() -> None:
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0}
    folded, _ = fold(
        start(),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta", "citation": citation}},
    )
    assert folded.blocks[0]["citations"] == [citation]


@pytest.mark.parametrize(
    "bad",
    [
        # A delta for a block that never started.
        [{"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "x"}}],
        # A tool input that is not JSON.
        [
            {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "B", "input": {}}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}},
            {"type": "content_block_stop", "index": 0},
        ],
    ],
)  # fmt: skip
def test_a_stream_that_breaks_the_protocol_says_how(bad: list[dict]) -> None:
    with pytest.raises(StreamFormatError):
        fold(start(), *bad)


def test_unknown_block_types_go_back_without_their_empty_fields() -> None:
    block = {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"q": "x"}, "cache_control": None}
    assert request_block(block) == {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"q": "x"}}
