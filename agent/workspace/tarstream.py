"""Tar streams for ``Import``: built on a worker thread, sent by the event loop as they are ready."""

from __future__ import annotations

import asyncio
import io
import stat
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator

TAR_CHUNK = 1 << 20
"""Bytes of tar stream handed to the sender at a time."""

QUEUE_DEPTH = 8
"""Chunks the builder may run ahead of the sender (bounds the memory an upload holds)."""


class TarBuilder:
    """A PAX tar stream of files and symlinks, taken out in chunks as it grows."""

    def __init__(self) -> None:
        """Start an empty stream."""
        self._sink = _Sink()
        self._tar = tarfile.open(fileobj=self._sink, mode="w|", format=tarfile.PAX_FORMAT)

    def add(self, rel: str, mode: int, data: bytes, mtime: int = 0) -> None:
        """Add ``rel``: a symlink to ``data`` (its target) if ``mode`` says so, else a file holding ``data``."""
        info = tarfile.TarInfo(rel)
        info.mode = mode & 0o777
        info.mtime = mtime
        if stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = data.decode("utf-8", "surrogateescape")
            self._tar.addfile(info)
        else:
            info.size = len(data)
            self._tar.addfile(info, io.BytesIO(data))

    def ready(self) -> Iterator[bytes]:
        """A chunk if enough of the stream has built up."""
        if self._sink.size >= TAR_CHUNK:
            yield self._sink.take()

    def close(self) -> Iterator[bytes]:
        """End the stream; the rest of it."""
        self._tar.close()
        if self._sink.size:
            yield self._sink.take()


async def chunks_from_thread(produce: Callable[[], Iterator[bytes]]) -> AsyncIterator[bytes]:
    """Run ``produce`` on a worker thread and yield its chunks here; its exceptions are raised here.

    The thread runs at most ``QUEUE_DEPTH`` chunks ahead, and stops when the consumer does.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    room = threading.Semaphore(QUEUE_DEPTH)
    stop = threading.Event()

    def hand_over(item: bytes | BaseException | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def build() -> None:
        try:
            for chunk in produce():
                while not room.acquire(timeout=0.2):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand_over(chunk)
            hand_over(None)
        except BaseException as exc:  # noqa: BLE001 - raised again on the consumer's side
            hand_over(exc)

    worker = threading.Thread(target=build, name="tether-tar", daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item
    finally:
        stop.set()
        await asyncio.to_thread(worker.join)


class _Sink(io.RawIOBase):
    """A write-only file that keeps what tarfile writes until it is taken."""

    def __init__(self) -> None:
        """Start empty."""
        super().__init__()
        self._parts: list[bytes] = []
        self.size = 0
        """Bytes kept."""

    def writable(self) -> bool:
        """Always: this is a sink."""
        return True

    def write(self, data) -> int:  # type: ignore[override]
        """Keep ``data``."""
        self._parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def take(self) -> bytes:
        """Everything kept, as one piece."""
        data = b"".join(self._parts)
        self._parts.clear()
        self.size = 0
        return data
