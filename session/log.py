"""One session's append-only event log: a JSONL file whose parent links form a tree."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from session.blobs import BlobStore
from session.conversation import build_messages
from session.durable import (
    append_record,
    ends_with_newline,
    fsync_directory,
    open_for_append,
    publish_new_file,
)
from session.errors import SessionStoreError, describe_os_error
from session.events import Event, EventType, LineRejected, parse_line, utc_timestamp
from session.lines import read_lines
from session.tree import link_events, path_to

logger = logging.getLogger(__name__)


class _Leaf:
    """The type of LEAF: 'hang the new event below the current leaf'."""

    def __repr__(self) -> str:
        return "LEAF"


LEAF: Final = _Leaf()
"""Default parent for SessionLog.append: the newest event on the live branch."""


class EventNotFound(SessionStoreError):
    """The session has no event with the given uuid."""


class SessionLog:
    """A session's event log on disk, with its events held in memory once loaded.

    One process writes a given log at a time; appends by another process after
    this object loaded the file are not seen until the log is opened again.
    """

    def __init__(
        self,
        path: Path,
        session_id: str,
        project_dir: Path,
        blobs: BlobStore,
        events: list[Event],
    ) -> None:
        self.path: Path = path
        """The JSONL file."""
        self.session_id: str = session_id
        """The session's id (a uuid4 string; also the file's stem)."""
        self.project_dir: Path = project_dir
        """The project directory the session belongs to."""
        self._blobs = blobs
        self._events = events
        self._by_uuid = {event.uuid: event for event in events}
        self._leaf: str | None = events[-1].uuid if events else None
        self._fd: int | None = None
        self._tail_is_clean = False

    # -- construction ------------------------------------------------------

    @classmethod
    def create(
        cls, path: Path, session_id: str, project_dir: Path, blobs: BlobStore, meta: dict[str, Any]
    ) -> SessionLog:
        """Create a new log file at path whose first line is a `meta` event.

        The log appears whole: its meta line is written and fsynced as `path` + ".tmp",
        which is then linked to `path` (failing if the name is taken, as O_EXCL would).
        A crash leaves no log or a log with its meta line, never an empty one, which
        would list under no project and resume into a session without any.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise describe_os_error("create the session directory", path.parent, error) from None
        temporary = path.with_name(f"{path.name}.tmp")
        fd = open_for_append(temporary, create=True, shown_as=path)
        log = cls(path, session_id, project_dir, blobs, [])
        log._adopt_fd(fd)
        log._tail_is_clean = True
        linked = False
        try:
            log.append(EventType.META, meta, parent_uuid=None)
            publish_new_file(temporary, path)
            linked = True
            fsync_directory(path.parent)
        except (SessionStoreError, OSError) as error:
            log.close()
            temporary.unlink(missing_ok=True)
            if linked:
                path.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise describe_os_error("create the session log", path, error) from None
            raise
        return log

    @classmethod
    def load(cls, path: Path, blobs: BlobStore) -> SessionLog:
        """Read an existing log, skipping (with a warning) whatever cannot be read."""
        with _collector_paused():  # one pause for everything the load builds (see _collector_paused)
            return cls._load(path, blobs)

    @classmethod
    def _load(cls, path: Path, blobs: BlobStore) -> SessionLog:
        """load's work, with the collector paused by the caller."""
        events = link_events(_read_events(path), path)
        project_dir = next(
            (
                Path(event.payload["project_dir"])
                for event in events
                if event.type == EventType.META and isinstance(event.payload.get("project_dir"), str)
            ),
            # Without a readable meta line the store's project folder is the best we know.
            path.parent,
        )
        return cls(path, path.stem, project_dir, blobs, events)

    # -- reading -----------------------------------------------------------

    def events(self) -> list[Event]:
        """All readable events in file order, dangling parents re-attached (see tree.py)."""
        return list(self._events)

    def event(self, event_uuid: str) -> Event:
        """The event with this uuid; EventNotFound if there is none."""
        try:
            return self._by_uuid[event_uuid]
        except KeyError:
            raise EventNotFound(f"session {self.session_id} has no event {event_uuid}", self.path) from None

    @property
    def leaf_uuid(self) -> str | None:
        """The event the next append hangs below by default."""
        return self._leaf

    def live_path(self) -> list[Event]:
        """The events from the root to the current leaf."""
        return path_to(self._leaf, self._by_uuid)

    def path_to(self, event_uuid: str) -> list[Event]:
        """The events from the root down to event_uuid; EventNotFound if there is none."""
        self.event(event_uuid)
        return path_to(event_uuid, self._by_uuid)

    def conversation(self, *, whole_history: bool = False) -> list[dict[str, Any]]:
        """The Messages API `messages` list for the live path, repaired (see conversation.py).

        From the newest compaction on, as the model sees it; ``whole_history``: every message.
        """
        with _collector_paused():
            return build_messages(path_to(self._leaf, self._by_uuid), whole_history=whole_history)

    # -- writing -----------------------------------------------------------

    def append(self, type: str, payload: dict[str, Any], *, parent_uuid: str | None | _Leaf = LEAF) -> Event:
        """Write one event as one line (one write, then fsync) and make it the leaf."""
        parent = self._leaf if isinstance(parent_uuid, _Leaf) else parent_uuid
        if parent is not None and parent not in self._by_uuid:
            raise EventNotFound(f"session {self.session_id} has no event {parent}", self.path)
        event = Event(str(uuid.uuid4()), parent, self.session_id, utc_timestamp(), str(type), payload)
        line = event.to_json_line()  # serialise first: a bad payload must not touch the file
        fd = self._writable_fd()
        if not self._tail_is_clean:
            try:
                torn = not ends_with_newline(fd)
            except OSError as error:
                raise describe_os_error("read the end of the session log", self.path, error) from None
            if torn:
                logger.warning("%s: the last line is torn; starting a fresh line", self.path)
                line = b"\n" + line
        try:
            append_record(fd, line, self.path)
        except SessionStoreError:
            self._tail_is_clean = False
            raise
        self._tail_is_clean = True
        # Keep what a reload would read, not the caller's dict: callers go on using
        # (and decorating, e.g. with cache_control) the objects they passed in.
        event = dataclasses.replace(event, payload=json.loads(line)["payload"])
        self._events.append(event)
        self._by_uuid[event.uuid] = event
        self._leaf = event.uuid
        return event

    def fork_at(self, event_uuid: str) -> None:
        """Make later appends hang below event_uuid: a new branch; nothing is rewritten."""
        self.event(event_uuid)
        self._leaf = event_uuid

    @property
    def blobs(self) -> BlobStore:
        """The project's blob store (e.g. for `blobs.batch()` when writing many blobs)."""
        return self._blobs

    def put_blob(self, data: bytes) -> str:
        """Store data in the project's blob directory; return its sha256 hex."""
        return self._blobs.put(data)

    def get_blob(self, sha: str) -> bytes:
        """The bytes of a stored blob."""
        return self._blobs.get(sha)

    def close(self) -> None:
        """Release the file descriptor (the log stays usable; it reopens on the next append)."""
        if self._fd is not None:
            self._closer.detach()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SessionLog({self.session_id!r}, path={str(self.path)!r})"

    def _writable_fd(self) -> int:
        """The append descriptor, opened on first use so read-only logs can still be read."""
        if self._fd is None:
            self._adopt_fd(open_for_append(self.path, create=False))
            self._tail_is_clean = False
        assert self._fd is not None
        return self._fd

    def _adopt_fd(self, fd: int) -> None:
        """Hold fd, closing it when this object is collected if close() was never called."""
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)


def read_log(path: Path) -> list[Event]:
    """Read a log file's events in file order, warning about each unreadable line."""
    with _collector_paused():
        return _read_events(path)


def _read_events(path: Path) -> list[Event]:
    """read_log's work, with the collector already paused by the caller."""
    events: list[Event] = []
    append = events.append
    try:
        with open(path, "rb", buffering=0) as file:
            # Lines are parsed straight from views of the read buffer (see lines.py).
            for number, (line, terminated) in enumerate(read_lines(file), start=1):
                try:
                    append(parse_line(line))
                except LineRejected as reason:
                    what = "an unreadable line" if terminated else "a torn last line"
                    logger.warning("%s:%d: skipping %s: %s", path, number, what, reason)
    except OSError as error:
        raise describe_os_error("read the session log", path, error) from None
    return events


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that all stay alive.

    Parsing a large log makes hundreds of thousands of objects; each automatic
    collection would walk all of them again, for nothing: none is garbage yet.
    Afterwards they go straight to the oldest generation (see _promote_young_objects).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            _promote_young_objects()
            gc.enable()


_PROMOTE_FROM_OBJECTS: Final = 10_000
"""How many objects a pause must have built to be promoted (a 10,000-event log builds ~50,000)."""


def _promote_young_objects() -> None:
    """Move every tracked object to the oldest generation, without walking any of them.

    After a pause, the first allocation would start a young collection that walks
    everything built meanwhile (for a long session, tens of milliseconds of cache
    misses), and a later middle-generation collection would walk it all again,
    only to move it to the oldest generation, where a log's events and messages
    end up anyway: they live as long as the session. freeze() then unfreeze()
    moves them there directly. Young garbage cycles of anyone else wait for the
    next full collection instead of the next young one: a delay, not a leak.
    When someone keeps objects frozen on purpose (the TUI freezes what it imported; a server
    freezes before a fork), unfreeze() would undo that: the new objects join the frozen ones
    instead. Frozen is not immortal: reference counting still frees them when the session goes.
    """
    # A small load is left to the young collection: it is cheap, and nothing else moves early.
    if gc.get_count()[0] >= _PROMOTE_FROM_OBJECTS:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        else:
            gc.freeze()
