"""A session's live path as a readable Markdown transcript (for `show` and `export --format md`)."""

from __future__ import annotations

import json
import re
from typing import Any

from session.events import Event, EventType
from session.plaintext import content_text, counted

_LONGEST_BACKTICKS = re.compile(r"`+")


def render_markdown(events: list[Event]) -> str:
    """The transcript of a live path: prompts, answers, tool calls with their results, notices."""
    parts: list[str] = []
    tool_names: dict[str, str] = {}
    for event in events:
        payload = event.payload
        kind = event.type
        if kind == EventType.USER:
            text = content_text(payload.get("content")).strip()
            if text:
                parts.append(f"## User\n\n{text}")
        elif kind == EventType.ASSISTANT:
            parts.extend(_assistant_parts(payload, tool_names))
        elif kind == EventType.TOOL_RESULT:
            tool_use_id = payload.get("tool_use_id")
            name = payload.get("tool_name") or tool_names.get(str(tool_use_id), "tool")
            content = payload.get("content")
            text = content if isinstance(content, str) else content_text(content)
            label = "Error from" if payload.get("is_error") else "Result of"
            note = ""
            if payload.get("output_blob"):
                note = f" (full output: {payload.get('output_bytes', '?')} bytes in blob `{payload['output_blob']}`)"
            parts.append(f"**{label} {name}**{note}\n\n{_fence(text or '(no output)')}")
        elif kind == EventType.COMPACTION:
            summary = payload.get("summary") or ""
            parts.append(f"---\n\n*The conversation was compacted. Summary:*\n\n{_quote(summary)}\n\n---")
        elif kind == EventType.SANDBOX:
            what = payload.get("event", "event")
            host = payload.get("host", "?")
            sandbox_id = payload.get("sandbox_id", "?")
            parts.append(f"*Sandbox {what}: `{sandbox_id}` on {host}*")
        elif kind == EventType.HOST:
            parts.append(_host_line(payload))
        elif kind == EventType.CHECKPOINT:
            parts.append(_checkpoint_line(payload))
        elif kind == EventType.INTERRUPTION:
            parts.append(f"*Interrupted: {payload.get('reason', 'unknown reason')}*")
        elif kind == EventType.TITLE:
            parts.append(f"*Title set: {payload.get('title', '')}*")
    return "\n\n".join(parts) + ("\n" if parts else "")


def _assistant_parts(payload: dict[str, Any], tool_names: dict[str, str]) -> list[str]:
    """The Markdown for one assistant message: its text and its tool calls."""
    message = payload.get("message")
    blocks = message.get("content") if isinstance(message, dict) else None
    parts: list[str] = []
    texts: list[str] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"].strip():
            texts.append(block["text"].strip())
        elif block.get("type") == "tool_use":
            name = str(block.get("name", "tool"))
            tool_names[str(block.get("id"))] = name
            arguments = json.dumps(block.get("input", {}), indent=2, ensure_ascii=False)
            texts.append(f"**Tool call: {name}**\n\n{_fence(arguments, 'json')}")
    if texts:
        parts.append("## Assistant\n\n" + "\n\n".join(texts))
    return parts


def _host_line(payload: dict[str, Any]) -> str:
    """A change of sandbox host in one line: what happened, where to, and why."""
    what = str(payload.get("event", "changed host"))
    host = payload.get("host", "?")
    previous = payload.get("previous")
    came = f" from {previous}" if previous and previous != host else ""
    reason = str(payload.get("reason", "")).strip()
    why = f" ({reason})" if reason else ""
    kept = "; the sandbox survived" if payload.get("kept") else ""
    return f"*Sandbox host {what}{came} to {host}{kept}{why}*"


def _checkpoint_line(payload: dict[str, Any]) -> str:
    """A workspace checkpoint in one line: its number, why it was taken, and the workspace's size."""
    files, size = payload.get("files"), payload.get("bytes")
    files_text = counted(files, "file") if isinstance(files, int) else "? files"
    size_text = counted(size, "byte") if isinstance(size, int) else "? bytes"
    return f"*Checkpoint {payload.get('seq', '?')} ({payload.get('label', '?')}): {files_text}, {size_text}*"


def _fence(text: str, language: str = "") -> str:
    """text in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in _LONGEST_BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _quote(text: str) -> str:
    """text as a Markdown block quote."""
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines()) or ">"
