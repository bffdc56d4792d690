"""Rebuild the Messages API `messages` list from the live path of a session, repaired.

The result always satisfies the API's validation rules: it starts with a user
message, roles strictly alternate, every `tool_use` is answered by a
`tool_result` in the very next (user) message, every `tool_result` answers a
`tool_use` of the assistant message just before it, tool results come before
any other block in their message, and no message or text block is empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from session.events import Event, EventType

logger = logging.getLogger(__name__)

INTERRUPTED_TOOL_RESULT = (
    "The tool was interrupted before it finished (the session was stopped). "
    "It may or may not have run."
)
"""What the model is told for a tool call whose result never reached the log."""

COMPACTION_PREAMBLE = (
    "This session continues an earlier conversation that was compacted to save context. "
    "Summary of the conversation so far:\n\n"
)
"""Put before a compaction summary in the user message that replaces the older history."""

MISSING_START = "(The start of this conversation is missing from the session log.)"
"""The user message put first when the live path would otherwise start with the assistant."""

EMPTY_TOOL_RESULT = "(no output)"
"""Stands in for a tool result whose content is empty."""


@dataclass
class _UserTurn:
    """A user message being assembled: tool results first, then everything else."""

    answers_for: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    other: list[dict[str, Any]] = field(default_factory=list)

    def to_message(self) -> dict[str, Any]:
        """The finished message, with a synthetic error result for each unanswered call."""
        content: list[dict[str, Any]] = [
            self.results.get(tool_use_id) or _interrupted_result(tool_use_id)
            for tool_use_id in self.answers_for
        ]
        content.extend(self.other)
        return {"role": "user", "content": content}


@dataclass
class _AssistantTurn:
    """An assistant message being assembled from one or more assistant events."""

    blocks: list[dict[str, Any]]

    def tool_use_ids(self) -> list[str]:
        """The ids of this message's tool calls, in order."""
        return [block["id"] for block in self.blocks if block["type"] == "tool_use"]

    def to_message(self) -> dict[str, Any]:
        """The finished message."""
        return {"role": "assistant", "content": self.blocks}


def build_messages(live_path: list[Event]) -> list[dict[str, Any]]:
    """The `messages` list for a live path (root first), repaired as the module says."""
    start = 0
    turns: list[_UserTurn | _AssistantTurn] = []
    for position in range(len(live_path) - 1, -1, -1):
        if live_path[position].type == EventType.COMPACTION:
            start = position + 1
            summary = live_path[position].payload.get("summary")
            if isinstance(summary, str) and summary.strip():
                turns.append(_UserTurn([], other=[_text(COMPACTION_PREAMBLE + summary)]))
            break

    for event in live_path[start:]:
        kind = event.type
        if kind == EventType.USER:
            for block in _user_blocks(event.payload.get("content")):
                if block["type"] == "tool_result":
                    _add_result(turns, block, event)
                else:
                    _open_user_turn(turns).other.append(block)
        elif kind == EventType.TOOL_RESULT:
            block = _result_block(event.payload)
            if block is not None:
                _add_result(turns, block, event)
        elif kind == EventType.ASSISTANT:
            blocks = _assistant_blocks(event.payload)
            if not blocks:
                continue
            last = turns[-1] if turns else None
            if isinstance(last, _AssistantTurn):
                unanswered = last.tool_use_ids()
                if not unanswered:
                    # Two responses in a row (the user turn between was lost or empty):
                    # the API would merge them itself, so merge them here.
                    last.blocks.extend(blocks)
                    continue
                turns.append(_UserTurn(unanswered))
            turns.append(_AssistantTurn(blocks))
        # Every other type (meta, sandbox, title, interruption, unknown) is not conversation.

    if turns and isinstance(turns[-1], _AssistantTurn) and turns[-1].tool_use_ids():
        turns.append(_UserTurn(turns[-1].tool_use_ids()))
    if turns and isinstance(turns[0], _AssistantTurn):
        turns.insert(0, _UserTurn([], other=[_text(MISSING_START)]))
    return [turn.to_message() for turn in turns]


def _open_user_turn(turns: list[_UserTurn | _AssistantTurn]) -> _UserTurn:
    """The user turn at the end of turns, started if the last turn is the assistant's."""
    last = turns[-1] if turns else None
    if isinstance(last, _UserTurn):
        return last
    turn = _UserTurn(last.tool_use_ids() if last is not None else [])
    turns.append(turn)
    return turn


def _add_result(
    turns: list[_UserTurn | _AssistantTurn], block: dict[str, Any], event: Event
) -> None:
    """File a tool result under the call it answers, or drop it if it answers none."""
    last = turns[-1] if turns else None
    tool_use_id = block["tool_use_id"]
    if isinstance(last, _AssistantTurn):
        expected = tool_use_id in last.tool_use_ids()
    else:
        expected = last is not None and tool_use_id in last.answers_for and tool_use_id not in last.results
    if not expected:
        logger.debug("event %s: dropping a result for tool call %s, which is not open", event.uuid, tool_use_id)
        return
    _open_user_turn(turns).results[tool_use_id] = block


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    """The content blocks of a user prompt, empty text dropped."""
    if isinstance(content, str):
        return [_text(content)] if content.strip() else []
    if not isinstance(content, list):
        return []
    blocks: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            continue
        if block["type"] == "text":
            text = block.get("text")
            if isinstance(text, str) and text.strip():
                blocks.append(_copy(block))
        elif block["type"] == "tool_result":
            repaired = _result_block(block)
            if repaired is not None:
                blocks.append(repaired)
        else:
            blocks.append(_copy(block))
    return blocks


def _assistant_blocks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw content blocks of an assistant event, minus ones the API would reject."""
    message = payload.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    blocks: list[dict[str, Any]] = []
    tool_use_ids: set[str] = set()
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not (isinstance(text, str) and text.strip()):
                continue
        elif kind == "thinking":
            # An unsigned thinking block is rejected by the API; it cannot be sent back.
            if not isinstance(block.get("signature"), str):
                continue
        elif kind == "tool_use":
            tool_use_id = block.get("id")
            if not (isinstance(tool_use_id, str) and isinstance(block.get("name"), str)):
                continue
            if tool_use_id in tool_use_ids:
                continue
            tool_use_ids.add(tool_use_id)
        elif not isinstance(kind, str):
            continue
        blocks.append(_copy(block))
    return blocks


def _result_block(fields: dict[str, Any]) -> dict[str, Any] | None:
    """A tool_result content block from a tool_result event's payload (or a raw block)."""
    tool_use_id = fields.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        return None
    content = fields.get("content")
    if isinstance(content, list):
        content = [_copy(item) if isinstance(item, dict) else item for item in content] or EMPTY_TOOL_RESULT
    elif isinstance(content, str):
        content = content or EMPTY_TOOL_RESULT
    else:
        content = EMPTY_TOOL_RESULT if content is None else str(content)
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
    if fields.get("is_error"):
        block["is_error"] = True
    return block


def _interrupted_result(tool_use_id: str) -> dict[str, Any]:
    """The synthetic error result for a tool call that never got one."""
    return {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": INTERRUPTED_TOOL_RESULT,
        "is_error": True,
    }


def _text(text: str) -> dict[str, Any]:
    """A text content block."""
    return {"type": "text", "text": text}


def _copy(block: dict[str, Any]) -> dict[str, Any]:
    """A copy of a content block, so callers may decorate it (cache_control) freely.

    Shallow on purpose: deep copies of a long session cost more than the parse
    itself, and nothing sets keys inside a block's nested values.
    """
    return dict(block)
