"""The tree the parent links of a session log make, repaired so that it is always a tree.

Repair rules (each logged as a warning):
- an event whose uuid was already seen is skipped (the first one wins);
- an event whose parent_uuid names no earlier readable event (its parent was a
  torn or corrupt line, or the link is garbage) is re-attached to the readable
  event just before it in file order, which is where its lost parent stood in a
  log written by one writer. The first event of a log stays a root.
Because every parent precedes its child in file order, the links cannot loop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

from session.events import Event

logger = logging.getLogger(__name__)


def link_events(events: Iterable[Event], source: Path) -> list[Event]:
    """The events in file order with duplicates dropped and dangling parents re-attached."""
    linked: list[Event] = []
    seen: set[str] = set()
    previous: str | None = None
    for event in events:
        if event.uuid in seen:
            logger.warning("%s: skipping a second event with uuid %s", source, event.uuid)
            continue
        parent = event.parent_uuid
        if parent is not None and parent not in seen:
            logger.warning(
                "%s: event %s names parent %s, which is not an earlier event; attaching it to the event before it (%s)",
                source,
                event.uuid,
                parent,
                previous,
            )
            event = dataclasses.replace(event, parent_uuid=previous)
        seen.add(event.uuid)
        linked.append(event)
        previous = event.uuid
    return linked


def path_to(leaf_uuid: str | None, by_uuid: dict[str, Event]) -> list[Event]:
    """The events from the root down to leaf_uuid (empty if there is no leaf)."""
    path: list[Event] = []
    current = leaf_uuid
    while current is not None:
        event = by_uuid[current]
        path.append(event)
        current = event.parent_uuid
    path.reverse()
    return path
