"""Rebuild the Messages API `messages` list from the live path of a session, repaired.

The result always satisfies the API's validation rules: it starts with a user
message, roles strictly alternate, every `tool_use` is answered by a
`tool_result` in the very next (user) message, every `tool_result` answers a
`tool_use` of the assistant message just before it, tool results come before
any other block in their message, and no message or text block is empty.
"""

from __future__ import annotations

import logging
from typing import Any

from session.events import Event, EventType

logger = logging.getLogger(__name__)

INTERRUPTED_TOOL_RESULT = (
    "The tool was interrupted before it finished (the session was stopped). It may or may not have run."
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


class _UserTurn:
    """A user message being assembled: tool results first, then everything else."""

    __slots__ = ("answers_for", "results", "other")

    def __init__(self, answers_for: list[str], other: list[dict[str, Any]] | None = None) -> None:
        self.answers_for = answers_for
        """The ids of the calls this message must answer, in call order."""
        self.results: dict[str, dict[str, Any]] = {}
        """The results received so far, by call id."""
        self.other: list[dict[str, Any]] = other if other is not None else []
        """The blocks that are not tool results, in order."""

    def to_message(self) -> dict[str, Any]:
        """The finished message, with a synthetic error result for each unanswered call."""
        results = self.results
        if len(results) == len(self.answers_for):  # the usual case: every call answered
            content = [results[tool_use_id] for tool_use_id in self.answers_for]
        else:
            content = [results.get(tool_use_id) or _interrupted_result(tool_use_id) for tool_use_id in self.answers_for]
        content.extend(self.other)
        return {"role": "user", "content": content}


class _AssistantTurn:
    """An assistant message being assembled from one or more assistant events."""

    __slots__ = ("blocks", "tool_use_ids")

    def __init__(self, blocks: list[dict[str, Any]], tool_use_ids: list[str]) -> None:
        self.blocks = blocks
        """The content blocks, already filtered and copied."""
        self.tool_use_ids = tool_use_ids
        """The ids of this message's tool calls, in order."""

    def to_message(self) -> dict[str, Any]:
        """The finished message."""
        return {"role": "assistant", "content": self.blocks}


# Plain strings: comparing with a StrEnum member costs a class attribute lookup each time.
_USER: str = EventType.USER.value
_TOOL_RESULT: str = EventType.TOOL_RESULT.value
_ASSISTANT: str = EventType.ASSISTANT.value
_COMPACTION: str = EventType.COMPACTION.value


def build_messages(live_path: list[Event], *, whole_history: bool = False) -> list[dict[str, Any]]:
    """The `messages` list for a live path (root first), repaired as the module says.

    By default it starts at the newest compaction, as the model sees it; with
    ``whole_history`` it holds every message, each compaction's summary in its place.
    """
    start = 0
    turns: list[_UserTurn | _AssistantTurn] = []
    for position in range(len(live_path) - 1, -1, -1):
        if whole_history:
            break
        if live_path[position].type == _COMPACTION:
            start = position + 1
            summary = live_path[position].payload.get("summary")
            if isinstance(summary, str) and summary.strip():
                turns.append(_UserTurn([], other=[_text(COMPACTION_PREAMBLE + summary)]))
            break

    for event in live_path[start:] if start else live_path:
        kind = event.type
        if kind == _TOOL_RESULT:
            block = _result_block(event.payload)
            if block is not None:
                _add_result(turns, block, event)
        elif kind == _ASSISTANT:
            blocks, tool_use_ids = _assistant_blocks(event.payload)
            if not blocks:
                continue
            last = turns[-1] if turns else None
            if type(last) is _AssistantTurn:
                if not last.tool_use_ids:
                    # Two responses in a row (the user turn between was lost or empty):
                    # the API would merge them itself, so merge them here.
                    last.blocks.extend(blocks)
                    last.tool_use_ids = tool_use_ids
                    continue
                turns.append(_UserTurn(last.tool_use_ids))
            turns.append(_AssistantTurn(blocks, tool_use_ids))
        elif kind == _USER:
            for block in _user_blocks(event.payload.get("content")):
                if block["type"] == "tool_result":
                    _add_result(turns, block, event)
                else:
                    _open_user_turn(turns).other.append(block)
        elif kind == _COMPACTION and whole_history:
            summary = event.payload.get("summary")
            if isinstance(summary, str) and summary.strip():
                # Where the model's context restarted: what it was given from here on.
                _open_user_turn(turns).other.append(_text(COMPACTION_PREAMBLE + summary))
        # Every other type (meta, sandbox, title, interruption, unknown) is not conversation.

    if turns:
        last = turns[-1]
        if type(last) is _AssistantTurn and last.tool_use_ids:
            turns.append(_UserTurn(last.tool_use_ids))
        if type(turns[0]) is _AssistantTurn:
            turns.insert(0, _UserTurn([], other=[_text(MISSING_START)]))
    return [turn.to_message() for turn in turns]


def _open_user_turn(turns: list[_UserTurn | _AssistantTurn]) -> _UserTurn:
    """The user turn at the end of turns, started if the last turn is the assistant's."""
    last = turns[-1] if turns else None
    if type(last) is _UserTurn:
        return last
    # `type(x) is` (faster than isinstance on this hot path) does not narrow for mypy.
    turn = _UserTurn(last.tool_use_ids if last is not None else [])  # type: ignore[union-attr]
    turns.append(turn)
    return turn


def _add_result(turns: list[_UserTurn | _AssistantTurn], block: dict[str, Any], event: Event) -> None:
    """File a tool result under the call it answers, or drop it if it answers none."""
    last = turns[-1] if turns else None
    tool_use_id = block["tool_use_id"]
    if type(last) is _AssistantTurn:
        if tool_use_id in last.tool_use_ids:
            turn = _UserTurn(last.tool_use_ids)
            turn.results[tool_use_id] = block
            turns.append(turn)
            return
    elif last is not None and tool_use_id in last.answers_for and tool_use_id not in last.results:  # type: ignore[union-attr]
        last.results[tool_use_id] = block  # type: ignore[union-attr]
        return
    logger.debug("event %s: dropping a result for tool call %s, which is not open", event.uuid, tool_use_id)


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


def _assistant_blocks(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The raw content blocks of an assistant event, minus ones the API would reject; and its call ids."""
    message = payload.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    blocks: list[dict[str, Any]] = []
    tool_use_ids: list[str] = []
    if not isinstance(content, list):
        return blocks, tool_use_ids
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
            if tool_use_id in tool_use_ids:  # a handful of calls at most: a list is fastest
                continue
            tool_use_ids.append(tool_use_id)
        elif not isinstance(kind, str):
            continue
        blocks.append(dict(block))  # _copy, inlined: this runs for every block of a long session
    return blocks, tool_use_ids


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
