"""A command's output on the host: descriptors read on the event loop into one buffer with a cheap timed wait."""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Iterable

from remote_sandbox.execution.request import QUEUE_HIGH_WATER

Item = tuple[str, bytes | None]
"""``(stream, bytes)``, or ``(stream, None)`` for its end; streams are ``out``, ``err`` or a provider's own."""

_READ_SIZE = 256 * 1024


class EventBuffer:
    """Chunks, EOFs and notices of one command, in arrival order, with one waiter and no task per wait.

    An ``asyncio.Queue`` with ``timeout_at`` or ``wait_for`` costs a context manager or
    a task per wait, and a command waits several times on a round trip of a millisecond.
    """

    def __init__(self) -> None:
        """An empty buffer."""
        self.items: collections.deque[Item] = collections.deque()
        """What arrived and was not taken yet."""
        self.feeds: list[FdFeed] = []
        """The feeds that fill it, resumed once the consumer catches up."""
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Item) -> None:
        """Add one item and wake the waiting consumer."""
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def requeue(self, held: Iterable[Item]) -> None:
        """Put items taken ahead of time back in front, in their order."""
        self.items.extendleft(reversed(list(held)))

    async def get(self, deadline: float | None) -> Item | None:
        """The next item, or None once the loop time ``deadline`` has passed (None: never)."""
        items = self.items
        if len(items) <= QUEUE_HIGH_WATER // 2:
            for feed in self.feeds:
                if feed.paused:
                    feed.start()
        if not items:
            loop = asyncio.get_running_loop()
            if deadline is not None and deadline <= loop.time():
                return None
            waiter = self._waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not items:
                return None
        return items.popleft()


def _wake(waiter: asyncio.Future[None]) -> None:
    """Resolve ``waiter`` if nothing else has."""
    if not waiter.done():
        waiter.set_result(None)


class FdFeed:
    """Feeds what one non-blocking descriptor (pipe or FIFO) delivers, then its EOF, into an ``EventBuffer``.

    A bare ``add_reader`` rather than an asyncio transport: a command that prints a
    line costs a few microseconds less of the host's one event loop.
    """

    def __init__(self, stream: str, fd: int, events: EventBuffer, *, owns_fd: bool = True, watch: bool = True) -> None:
        """Read ``fd`` on the running loop (from ``start`` if not ``watch``), tagging chunks with ``stream``."""
        self.stream = stream
        """``out``, ``err`` or a provider's own stream name."""
        self.fd: int | None = fd
        """The read end, until EOF or ``close`` (when owned)."""
        self.events = events
        """Receives ``(stream, bytes)`` and finally ``(stream, None)``."""
        self.owns_fd = owns_fd
        """Whether EOF and ``close`` close the descriptor (one that outlives a command is not owned)."""
        self.paused = False
        """Whether reading stopped because the buffer was full."""
        self.eof = False
        """Whether the descriptor reported EOF (since the last ``start`` of one not owned)."""
        self._loop = asyncio.get_running_loop()
        self._reading = False
        os.set_blocking(fd, False)
        events.feeds.append(self)
        if watch:
            self.start()

    def start(self) -> None:
        """Watch the descriptor (again, after a pause or an EOF of a descriptor not owned)."""
        self.paused = False
        if self.fd is not None:
            self.eof = False
        if self.fd is not None and not self._reading:
            self._loop.add_reader(self.fd, self._readable)
            self._reading = True

    def stop(self) -> None:
        """Stop watching the descriptor; it stays open."""
        if self.fd is not None and self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False

    def _readable(self) -> None:
        """Buffer what is there; pause while the buffer is full (back-pressure)."""
        assert self.fd is not None
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # a broken pipe ends the stream like EOF
        if not data:
            self.eof = True
            self.close()
            self.events.put((self.stream, None))
            return
        self.events.put((self.stream, data))
        if len(self.events.items) >= QUEUE_HIGH_WATER:
            self.stop()
            self.paused = True

    def close(self) -> None:
        """Stop reading, and close the descriptor if this feed owns it. Safe to call twice."""
        self.stop()
        self.paused = False
        if self.fd is not None and self.owns_fd:
            os.close(self.fd)
            self.fd = None
