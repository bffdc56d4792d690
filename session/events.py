"""One event of a session log: its shape, its types, and its one-line JSON form."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""The log format version written in every `meta` event."""


class EventType(StrEnum):
    """The event types tether writes; readers keep any other type and skip it."""

    META = "meta"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL_RESULT = "tool_result"
    SANDBOX = "sandbox"
    COMPACTION = "compaction"
    TITLE = "title"
    INTERRUPTION = "interruption"
    CHECKPOINT = "checkpoint"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a session log: a node in the session's tree of events."""

    uuid: str
    """This event's id, unique within the session."""
    parent_uuid: str | None
    """The event this one follows; None for a root (the `meta` event)."""
    session_id: str
    """The session this event belongs to."""
    timestamp: str
    """When it was written: UTC, ISO-8601, millisecond precision."""
    type: str
    """What kind of event this is; see EventType and FORMAT.md."""
    payload: dict[str, Any]
    """The type-specific fields."""

    def to_json_line(self) -> bytes:
        """The event as one UTF-8 JSON line ending in a newline."""
        record = {
            "uuid": self.uuid,
            "parent_uuid": self.parent_uuid,
            "session_id": self.session_id,
            "timestamp": self.timestamp,
            "type": self.type,
            "payload": self.payload,
        }
        # JSON escapes every control character, so the line holds exactly one "\n".
        return (_ENCODER.encode(record) + "\n").encode("utf-8")


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

_second_formatted: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """The current time as the log writes it: 2025-01-31T12:34:56.789Z."""
    global _second_formatted
    now = time.time()
    second = int(now)
    cached_second, prefix = _second_formatted
    if second != cached_second:  # strftime is slow next to an append; reuse it within a second
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_formatted = (second, prefix)
    return f"{prefix}.{int((now - second) * 1000):03d}Z"


try:
    # Parses a long log about twice as fast as json, straight from bytes or a view of them.
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a broken install readable
    _fast_loads = json.loads  # type: ignore[assignment]


class LineRejected(ValueError):
    """A log line that cannot be read as an event; the message says why."""


def parse_line(line: bytes | bytearray | memoryview | str) -> Event:
    """Read one log line (without its newline) as an Event, or raise LineRejected."""
    try:
        # The common case: a sound line. Whitespace around it is JSON whitespace, so the
        # raw bytes parse exactly as stripped ones would, without a copy to strip them.
        record = _fast_loads(line)
    except (ValueError, TypeError):  # TypeError: json.loads (no orjson) takes no memoryview
        record = _load_damaged(line)
    return event_from_record(record)


def _load_damaged(line: bytes | bytearray | memoryview | str) -> Any:
    """Parse a line the fast parser refused: strip crash debris, let the standard parser decide."""
    if isinstance(line, str):
        text: bytes | str = line.strip("\x00 \t\r")
    else:
        # A crash can leave NUL padding where a write was lost; the bytes around it may be sound.
        text = bytes(line).strip(b"\x00 \t\r")
    if not text:
        raise LineRejected("blank line or a run of NUL bytes")
    try:
        return _fast_loads(text)
    except ValueError:
        try:  # orjson is stricter (lone surrogate escapes): the standard parser decides
            return json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise LineRejected(f"not JSON ({error.__class__.__name__}: {error})") from None


def event_from_record(record: Any) -> Event:
    """The Event a parsed log line describes, or LineRejected if a field is missing or mistyped."""
    if type(record) is not dict:
        raise LineRejected("not a JSON object")
    try:
        uuid = record["uuid"]
        parent_uuid = record["parent_uuid"]
        session_id = record["session_id"]
        timestamp = record["timestamp"]
        event_type = record["type"]
        payload = record["payload"]
    except KeyError as missing:
        raise LineRejected(f"missing field {missing}") from None
    if not (
        type(uuid) is str
        and uuid
        and (parent_uuid is None or type(parent_uuid) is str)
        and type(session_id) is str
        and type(timestamp) is str
        and type(event_type) is str
        and type(payload) is dict
    ):
        raise LineRejected("a field has the wrong type")
    # Event's generated __init__ goes through the frozen check six times, which costs as
    # much as parsing a short line; the slots' own descriptors store the fields directly.
    event = _new_event(Event)
    _set_uuid(event, uuid)
    _set_parent_uuid(event, parent_uuid)
    _set_session_id(event, session_id)
    _set_timestamp(event, timestamp)
    _set_type(event, event_type)
    _set_payload(event, payload)
    return event


_new_event = object.__new__
_set_uuid = Event.uuid.__set__  # type: ignore[attr-defined,misc,union-attr]
_set_parent_uuid = Event.parent_uuid.__set__  # type: ignore[attr-defined,misc,union-attr]
_set_session_id = Event.session_id.__set__  # type: ignore[attr-defined,misc,union-attr]
_set_timestamp = Event.timestamp.__set__  # type: ignore[attr-defined,misc,union-attr]
_set_type = Event.type.__set__  # type: ignore[attr-defined,misc,union-attr]
_set_payload = Event.payload.__set__  # type: ignore[attr-defined,misc,union-attr]
