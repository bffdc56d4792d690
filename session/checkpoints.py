"""Workspace checkpoints in a session log: the files' states as diffs, replayed along a path.

Each `checkpoint` event holds the change from the state of the checkpoint before
it on the same path (the empty state for the first): the files set (sha256, mode,
size) and the paths removed. File contents are blobs in the project's blob store;
a change list too large for one log line is a blob itself (`changes_blob`).
Rewind forks the tree, so the state at an event counts only the checkpoints on
the path from the root to that event.
"""

from __future__ import annotations

import base64
import binascii
import json
import weakref
from dataclasses import dataclass, field
from typing import Any, Final

from session.errors import SessionStoreError
from session.events import Event, EventType
from session.log import SessionLog

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _loads = json.loads  # type: ignore[assignment]

LABELS: Final = frozenset({"baseline", "resume", "tool", "restore", "rewind", "apply"})
"""Why a checkpoint was taken: the values of its `label` field."""

INLINE_CHANGES_MAX_BYTES: Final = 64 * 1024
"""Changes whose JSON is larger than this go into a blob instead of the log line."""

_PAYLOAD_KEYS: Final = frozenset({"seq", "after", "label", "files", "bytes", "set", "removed", "changes_blob"})
_NAME_MARKER: Final = "\0"


@dataclass(frozen=True, slots=True)
class FileState:
    """One workspace file as a checkpoint records it."""

    sha256: str
    """The sha256 hex of the content (for a symlink: of its target) — a blob's name."""
    mode: int
    """The full st_mode, type bits included (S_IFREG, S_IFLNK, …)."""
    size: int
    """The content's size in bytes."""


WorkspaceState = dict[str, FileState]
"""A workspace's files by workspace-relative path; names that are not UTF-8 hold surrogateescapes."""


@dataclass(slots=True)
class CheckpointChanges:
    """What changed between two workspace states."""

    set: dict[str, FileState] = field(default_factory=dict)
    """Paths that are new or whose state changed, with their new state."""
    removed: list[str] = field(default_factory=list)
    """Paths that no longer exist."""


class CheckpointDamaged(SessionStoreError):
    """A checkpoint event (or its changes blob) cannot be read, so no state can be built from it."""

    def __init__(self, event: Event, reason: str, log: SessionLog) -> None:
        super().__init__(
            f"checkpoint {event.payload.get('seq', '?')} (event {event.uuid}) of session "
            f"{event.session_id} cannot be read: {reason}",
            log.path,
        )
        self.event: Event = event
        """The checkpoint event that could not be read."""


def encode_path(path: str) -> str:
    """The path as the log writes it: itself, or "\\0" + base64 of its bytes when JSON cannot hold it.

    JSON text must be UTF-8, so a name with surrogateescapes (bytes that are not
    UTF-8) is written as base64 of its raw bytes. No file name holds NUL, so the
    marker never clashes with a real name.
    """
    if not path.startswith(_NAME_MARKER):
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"not a file name (a surrogate that no bytes decode to): {path!r}") from None
    return _NAME_MARKER + base64.b64encode(raw).decode("ascii")


def decode_path(text: str) -> str:
    """The path encode_path wrote as text (a ValueError if the base64 is damaged)."""
    if not text.startswith(_NAME_MARKER):
        return text
    try:
        raw = base64.b64decode(text[1:], validate=True)
    except binascii.Error:
        raise ValueError(f"damaged encoded file name: {text!r}") from None
    return raw.decode("utf-8", "surrogateescape")


def diff_states(old: WorkspaceState, new: WorkspaceState) -> CheckpointChanges:
    """The changes that turn old into new (paths sorted, so equal states give equal events)."""
    changed = {path: state for path, state in new.items() if old.get(path) != state}
    return CheckpointChanges(
        set={path: changed[path] for path in sorted(changed)},
        removed=sorted(path for path in old if path not in new),
    )


def apply_changes(state: WorkspaceState, changes: CheckpointChanges) -> WorkspaceState:
    """A new state: state with changes applied (state itself is not touched)."""
    result = dict(state)
    _apply_in_place(result, changes)
    return result


def record_checkpoint(
    log: SessionLog,
    changes: CheckpointChanges,
    *,
    seq: int,
    after_tool_use_id: str | None,
    label: str,
    files: int,
    bytes: int,
    extra: dict[str, Any] | None = None,
) -> Event:
    """Append a `checkpoint` event holding changes; a large change list goes into a blob.

    The file contents must already be durable in the log's blob store (write them in
    `log.blobs.batch()` and end the block first): the event promises they exist.
    """
    if label not in LABELS:
        raise ValueError(f"unknown checkpoint label {label!r} (expected one of {sorted(LABELS)})")
    clashing = sorted(_PAYLOAD_KEYS.intersection(extra or {}))
    if clashing:
        raise ValueError(f"extra checkpoint fields would overwrite {clashing}")
    encoded = {
        "set": {encode_path(path): [state.sha256, state.mode, state.size] for path, state in changes.set.items()},
        "removed": [encode_path(path) for path in changes.removed],
    }
    payload: dict[str, Any] = {
        "seq": seq,
        "after": after_tool_use_id,
        "label": label,
        "files": files,
        "bytes": bytes,
    }
    document = json.dumps(encoded, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(document) > INLINE_CHANGES_MAX_BYTES:
        # A 10,000-file baseline would make a megabyte line that every load parses.
        sha = log.put_blob(document)
        _decoded_blobs(log)[sha] = CheckpointChanges(dict(changes.set), list(changes.removed))
        payload["changes_blob"] = sha
    else:
        payload.update(encoded)
    payload.update(extra or {})
    return log.append(EventType.CHECKPOINT, payload)


def checkpoints_on_path(log: SessionLog, event_uuid: str | None = None) -> list[Event]:
    """The checkpoint events from the root to event_uuid (None: the live leaf), oldest first."""
    return [event for event in _path(log, event_uuid) if event.type == EventType.CHECKPOINT]


def state_at(log: SessionLog, event_uuid: str | None = None) -> tuple[WorkspaceState, Event | None]:
    """The workspace state at event_uuid (None: the live leaf) and the newest checkpoint up to it.

    Only checkpoints on the path from the root count: another branch's are ignored.
    With no checkpoint on the path the state is empty and the event None.
    """
    state: WorkspaceState = {}
    newest: Event | None = None
    for event in checkpoints_on_path(log, event_uuid):
        _apply_in_place(state, checkpoint_changes(log, event))
        newest = event
    return state, newest


def checkpoint_changes(log: SessionLog, event: Event) -> CheckpointChanges:
    """The changes one checkpoint event of log records (read from its blob if it has one).

    The result may be shared with later calls: do not modify it.
    """
    cache = _decoded_events(log)
    cached = cache.get(event.uuid)
    if cached is not None:
        return cached
    payload = event.payload
    sha = payload.get("changes_blob")
    if sha is not None:
        changes = _changes_from_blob(log, event, sha)
    else:
        changes = _decode_changes(log, event, payload.get("set", {}), payload.get("removed", []))
    cache[event.uuid] = changes
    return changes


def _changes_from_blob(log: SessionLog, event: Event, sha: object) -> CheckpointChanges:
    """Read, decode and cache a changes blob; CheckpointDamaged if it is absent or unreadable."""
    if not isinstance(sha, str):
        raise CheckpointDamaged(event, f"changes_blob is {sha!r}, not a sha256", log)
    cache = _decoded_blobs(log)
    cached = cache.get(sha)
    if cached is not None:
        return cached
    try:
        document = _loads(log.get_blob(sha))
    except SessionStoreError as error:
        raise CheckpointDamaged(event, str(error), log) from None
    except ValueError as error:
        raise CheckpointDamaged(event, f"its changes blob {sha} is not JSON ({error})", log) from None
    if not isinstance(document, dict):
        raise CheckpointDamaged(event, f"its changes blob {sha} is not a JSON object", log)
    changes = _decode_changes(log, event, document.get("set", {}), document.get("removed", []))
    cache[sha] = changes
    return changes


def _decode_changes(log: SessionLog, event: Event, encoded_set: object, encoded_removed: object) -> CheckpointChanges:
    """CheckpointChanges from their JSON form; CheckpointDamaged if any part is malformed."""
    if not isinstance(encoded_set, dict) or not isinstance(encoded_removed, list):
        raise CheckpointDamaged(event, "`set` is not an object or `removed` not a list", log)
    new_state = FileState
    states: dict[str, FileState] = {}
    try:
        for name, entry in encoded_set.items():
            sha, mode, size = entry
            if type(sha) is not str or type(mode) is not int or type(size) is not int:
                raise ValueError(f"entry {entry!r} is not [sha256, mode, size]")
            states[decode_path(name) if name[:1] == _NAME_MARKER else name] = new_state(sha, mode, size)
        removed = [decode_path(name) for name in encoded_removed]
    except (ValueError, TypeError, AttributeError) as error:
        raise CheckpointDamaged(event, str(error), log) from None
    return CheckpointChanges(states, removed)


def _apply_in_place(state: WorkspaceState, changes: CheckpointChanges) -> None:
    """Apply changes to state itself: removals first, so a path both removed and set stays."""
    for path in changes.removed:
        state.pop(path, None)
    state.update(changes.set)


def _path(log: SessionLog, event_uuid: str | None) -> list[Event]:
    """The events from the root to event_uuid, or to the live leaf."""
    return log.live_path() if event_uuid is None else log.path_to(event_uuid)


# Decoded changes per log object: events and blobs never change once written, and a
# 10,000-file baseline takes longer to decode than the rest of a replay.
_EVENTS_CACHE: weakref.WeakKeyDictionary[SessionLog, dict[str, CheckpointChanges]] = weakref.WeakKeyDictionary()
_BLOBS_CACHE: weakref.WeakKeyDictionary[SessionLog, dict[str, CheckpointChanges]] = weakref.WeakKeyDictionary()


def _decoded_events(log: SessionLog) -> dict[str, CheckpointChanges]:
    """The log's cache of decoded changes by checkpoint event uuid."""
    cache = _EVENTS_CACHE.get(log)
    if cache is None:
        cache = _EVENTS_CACHE[log] = {}
    return cache


def _decoded_blobs(log: SessionLog) -> dict[str, CheckpointChanges]:
    """The log's cache of decoded changes blobs by sha256."""
    cache = _BLOBS_CACHE.get(log)
    if cache is None:
        cache = _BLOBS_CACHE[log] = {}
    return cache
