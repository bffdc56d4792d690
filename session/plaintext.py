"""What an event says, as plain text: for the search index, titles and transcripts."""

from __future__ import annotations

from typing import Any

from session.events import Event, EventType

TITLE_MAX_CHARS = 80
"""A title made from a prompt is cut to this many characters."""


def counted(number: int, noun: str) -> str:
    """``number`` with ``noun``, plural unless it is one: ``1 file``, ``1,024 files``."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def content_text(content: Any) -> str:
    """The text of a content value: a string, or the text blocks of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            block["text"]
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def assistant_text(payload: dict[str, Any]) -> str:
    """The text blocks of an assistant event, joined."""
    message = payload.get("message")
    return content_text(message.get("content")) if isinstance(message, dict) else ""


def searchable_text(event: Event) -> str:
    """The text of an event that search should find ('' when there is none)."""
    payload = event.payload
    kind = event.type
    if kind == EventType.USER or kind == EventType.TOOL_RESULT:
        return content_text(payload.get("content"))
    if kind == EventType.ASSISTANT:
        return assistant_text(payload)
    if kind == EventType.COMPACTION:
        summary = payload.get("summary")
        return summary if isinstance(summary, str) else ""
    if kind == EventType.TITLE:
        title = payload.get("title")
        return title if isinstance(title, str) else ""
    return ""


def title_from_prompt(prompt: str) -> str:
    """A session title made from its first prompt: the first non-blank line, cut short."""
    for line in prompt.splitlines():
        line = " ".join(line.split())
        if line:
            if len(line) > TITLE_MAX_CHARS:
                return line[: TITLE_MAX_CHARS - 1].rstrip() + "…"
            return line
    return ""
