"""Shared helpers for the session store tests: payload builders, a log writer, and a
checker of the Messages API's validation rules. (No tests here.)"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from session.events import Event
from session.paths import project_root


def text_block(text: str) -> dict[str, Any]:
    """A text content block."""
    return {"type": "text", "text": text}


def tool_use_block(tool_use_id: str, name: str = "Bash", command: str = "ls") -> dict[str, Any]:
    """A tool_use content block."""
    return {"type": "tool_use", "id": tool_use_id, "name": name, "input": {"command": command}}


def thinking_block(thought: str, signature: str | None = "sig") -> dict[str, Any]:
    """A thinking content block (unsigned when signature is None)."""
    block: dict[str, Any] = {"type": "thinking", "thinking": thought}
    if signature is not None:
        block["signature"] = signature
    return block


def assistant_payload(*blocks: dict[str, Any], cost: float | None = 0.001) -> dict[str, Any]:
    """An `assistant` event payload holding blocks."""
    stop = "tool_use" if any(block["type"] == "tool_use" for block in blocks) else "end_turn"
    return {
        "message": {
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "model": "claude-test",
            "content": list(blocks),
            "stop_reason": stop,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
        "cost_usd": cost,
    }


def tool_result_payload(tool_use_id: str, content: str, *, is_error: bool = False) -> dict[str, Any]:
    """A `tool_result` event payload."""
    return {
        "tool_use_id": tool_use_id,
        "tool_name": "Bash",
        "content": content,
        "is_error": is_error,
        "output_blob": None,
        "output_bytes": len(content.encode()),
    }


def write_log_file(
    home: Path,
    project_dir: Path,
    entries: list[tuple[str, dict[str, Any]]],
    *,
    session_id: str | None = None,
    timestamp: str = "2025-01-01T00:00:00.000Z",
) -> Path:
    """Write a whole session log in the real format without fsyncs (fast test data).

    The first entry should be the meta event; each event's parent is the one before it.
    """
    session_id = session_id or str(uuid.uuid4())
    path = project_root(home, project_dir) / f"{session_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    parent: str | None = None
    lines = []
    for kind, payload in entries:
        event = Event(str(uuid.uuid4()), parent, session_id, timestamp, kind, payload)
        lines.append(event.to_json_line())
        parent = event.uuid
    path.write_bytes(b"".join(lines))
    return path


def meta_payload(project_dir: Path) -> dict[str, Any]:
    """A `meta` event payload for project_dir."""
    return {
        "version": 1,
        "project_dir": str(project_dir),
        "cwd": str(project_dir),
        "model": None,
        "created_by": "tether test",
    }


def assert_valid_messages(messages: list[dict[str, Any]]) -> None:
    """Fail unless messages passes the Messages API's validation of a `messages` list."""
    seen_tool_use_ids: set[str] = set()
    for position, message in enumerate(messages):
        where = f"messages[{position}]"
        expected_role = "user" if position % 2 == 0 else "assistant"
        assert message["role"] == expected_role, f"{where}: roles must alternate starting with user"
        content = message["content"]
        assert isinstance(content, list) and content, f"{where}: empty content"
        for block in content:
            if block["type"] == "text":
                assert block["text"].strip(), f"{where}: text blocks must contain non-whitespace text"
            if block["type"] == "thinking":
                assert message["role"] == "assistant" and isinstance(block.get("signature"), str), where
            if block["type"] == "tool_use":
                assert message["role"] == "assistant", f"{where}: tool_use outside an assistant message"
                assert block["id"] not in seen_tool_use_ids, f"{where}: duplicate tool_use id"
                seen_tool_use_ids.add(block["id"])
        results = [block for block in content if block["type"] == "tool_result"]
        if results:
            assert message["role"] == "user", f"{where}: tool_result outside a user message"
            kinds = [block["type"] for block in content]
            assert kinds[: len(results)] == ["tool_result"] * len(results), (
                f"{where}: tool_result blocks must come first"
            )
            previous = messages[position - 1] if position > 0 else None
            assert previous is not None, f"{where}: tool_result with no assistant message before it"
            open_ids = [block["id"] for block in previous["content"] if block["type"] == "tool_use"]
            result_ids = [block["tool_use_id"] for block in results]
            assert len(result_ids) == len(set(result_ids)), f"{where}: duplicate tool_result ids"
            for result in results:
                assert result["tool_use_id"] in open_ids, (
                    f"{where}: tool_result {result['tool_use_id']} has no tool_use in the previous message"
                )
                if result.get("is_error"):
                    assert result["content"], f"{where}: an error result needs content"
        if message["role"] == "assistant":
            open_ids = [block["id"] for block in content if block["type"] == "tool_use"]
            if open_ids:
                assert position + 1 < len(messages), f"{where}: tool_use ids {open_ids} never answered"
                answer = messages[position + 1]
                answered = {block["tool_use_id"] for block in answer["content"] if block["type"] == "tool_result"}
                assert answered == set(open_ids), f"{where}: tool_use ids {open_ids} answered by {answered}"
