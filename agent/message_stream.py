"""The Messages API's stream events, as the API sends them (plain dicts), folded into one message.

The SDK still makes the request and reads the stream (auth, headers, status and
``event: error`` become its exceptions); the events stay the JSON the API sent.
Its typed models and its own snapshot of the message, rebuilt on every event,
cost about as much as drawing the answer on screen: a long answer is thousands
of events.
"""

from __future__ import annotations

import json
from typing import Any

API_EVENTS = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    }
)
"""The stream's own event types (``ping`` and unknown future types are passed over)."""


class StreamFormatError(ValueError):
    """The stream broke the protocol (a delta for a block never started, a tool input that is not JSON)."""


class StreamEnded(ConnectionError):
    """The stream ended (the connection closed cleanly) before ``message_stop``: the answer is incomplete."""


class MessageAccumulator:
    """Folds stream events into the whole message: its blocks, stop reason and usage."""

    def __init__(self) -> None:
        self.message: dict[str, Any] = {}
        """``message_start``'s message: id, model, usage…"""
        self.blocks: list[dict[str, Any]] = []
        """The content blocks so far, by index."""
        self.usage: dict[str, Any] = {}
        """The newest value of every usage count (``message_delta`` updates what it carries)."""
        self.stop_reason: str | None = None
        self.stopped = False
        """``message_stop`` arrived: the message is whole."""
        self._json: dict[int, list[str]] = {}
        """A tool call's input, in the pieces it streams in, until its block stops."""

    def add(self, event: dict[str, Any]) -> tuple[str, str] | None:
        """Fold ``event`` in; ``("text" | "thinking", piece)`` when it adds text to show as it streams."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event["delta"]
            block = self._block(event)
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                piece = delta["text"]
                block["text"] = block.get("text", "") + piece
                return ("text", piece)
            if delta_type == "input_json_delta":
                self._json.setdefault(event["index"], []).append(delta.get("partial_json", ""))
            elif delta_type == "thinking_delta":
                piece = delta["thinking"]
                block["thinking"] = block.get("thinking", "") + piece
                return ("thinking", piece)
            elif delta_type == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta_type == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
        elif kind == "content_block_start":
            index = event["index"]
            while len(self.blocks) <= index:
                self.blocks.append({})
            self.blocks[index] = dict(event["content_block"])
        elif kind == "content_block_stop":
            index = event["index"]
            pieces = self._json.pop(index, None)
            if pieces is not None:
                text = "".join(pieces)
                try:
                    self._block(event)["input"] = json.loads(text) if text.strip() else {}
                except ValueError as exc:
                    raise StreamFormatError(f"a tool call's input is not JSON ({exc}): {text[:200]!r}") from None
        elif kind == "message_start":
            self.message = event["message"]
            self.blocks = [dict(b) for b in self.message.get("content") or []]
            self.usage = dict(self.message.get("usage") or {})
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "message_delta":
            self.stop_reason = event.get("delta", {}).get("stop_reason", self.stop_reason)
            for key, value in (event.get("usage") or {}).items():
                if value is not None:
                    self.usage[key] = value
        return None

    def _block(self, event: dict[str, Any]) -> dict[str, Any]:
        index = event.get("index", -1)
        if not 0 <= index < len(self.blocks) or not self.blocks[index]:
            raise StreamFormatError(f"{event.get('type')} for block {index}, which was never started")
        return self.blocks[index]

    def content(self) -> list[dict[str, Any]]:
        """The blocks as a request may carry them back (only the fields the API accepts)."""
        return [request_block(block) for block in self.blocks if block]


def request_block(block: dict[str, Any]) -> dict[str, Any]:
    """A content block as the API accepts it back in a later request."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": block.get("input", {})}
    if kind == "thinking":
        return {"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature", "")}
    if kind == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.get("data", "")}
    return {key: value for key, value in block.items() if value is not None}
