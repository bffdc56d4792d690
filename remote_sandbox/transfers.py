"""The byte pipelines of the host: ReadFile, WriteFile, Export and Import.

Each works on a workspace directory (``remote_sandbox.workspace``) and moves
bytes between it and gRPC messages. Disk work runs on worker threads in
batches, one batch on a thread while the next goes over the wire, because a
trip to a thread costs about as much as a message. Every trip is shielded: a
cancelled call must not close a file under a thread still using it, so the
last trip releases the file when it ends (``_release_after_trip``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from protos.file_data import Buffer, file_chunk
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox import workspace as ws
from remote_sandbox.atomic_write import AtomicWrite
from remote_sandbox.config import MAX_MESSAGE_BYTES
from remote_sandbox.file_reader import FileReader
from remote_sandbox.providers.base import InvalidRequest, LimitExceeded

READ_BATCH_BYTES = 4 << 20
"""Bytes ReadFile reads per trip to a worker thread; the next batch is read while this one is sent."""

WRITE_BATCH_BYTES = 16 << 20
"""Most bytes WriteFile gathers while a trip to a worker thread writes the last ones; then it waits
for that trip, and stops reading the wire meanwhile. An upload holds at most twice this. With
4 MiB, a machine busy elsewhere made a 100 MB upload wait 1-150 ms on the disk here (page-cache
writes of 4 MiB took up to 14 ms); with 16 MiB, under 2 ms mostly."""

WRITE_DRAIN_BYTES = 256 << 20
"""How much of a refused upload (WriteFile, Import) is read and dropped before the
refusal is sent; an endless stream is cut off here."""

MAX_IMPORT_BYTES = 8 << 30
"""Largest tar stream Import accepts."""


def bytes_text(size: int) -> str:
    """``size`` in bytes, with a binary unit when that reads better: ``16777216 bytes (16 MiB)``."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            return f"{size} bytes ({size / (1 << shift):.4g} {unit})"
    return f"{size} bytes"


def check_message_size(message: Any, what: str, size: int | None = None) -> None:
    """Refuse a received message larger than ``MAX_MESSAGE_BYTES``, naming the limit.

    ``size`` may give the size already known (a data message is its data, give or
    take a few bytes): ``ByteSize`` serialises, which costs as much as a copy.
    """
    size = message.ByteSize() if size is None else size
    if size > MAX_MESSAGE_BYTES:
        raise LimitExceeded(
            f"limit reached: max message size is {bytes_text(MAX_MESSAGE_BYTES)}, and this {what} "
            f"is {size} bytes; send large data in smaller messages"
        )


async def first_message(
    request_iterator: AsyncIterator[Any], method: str, part: str, duty: str
) -> tuple[AsyncIterator[Any], Any]:
    """A client-streaming call's messages and its first one, which must carry ``part`` (it must ``duty``)."""
    messages = aiter(request_iterator)
    first = await anext(messages, None)
    if first is None:
        raise InvalidRequest(f"{method} received no messages; the first must {duty}")
    check_message_size(first, f"{method} message")
    if first.WhichOneof("part") != part:
        raise InvalidRequest(f"{method}'s first message must {duty}, not data")
    return messages, first


async def _data_of(messages: AsyncIterator[Any], method: str, limit: int, too_large: str) -> AsyncIterator[Buffer]:
    """The data of the messages after the first; ``LimitExceeded(too_large)`` past ``limit`` bytes in all.

    WriteFile's data may come as views of the received messages (``protos.file_data``).
    """
    received = 0
    async for message in messages:
        if message.WhichOneof("part") != "data":
            raise InvalidRequest(f"{method} sent a second {message.WhichOneof('part')}; only data may follow the first")
        data = message.data  # read once: each read of a protobuf bytes field copies it
        check_message_size(message, f"{method} message", len(data))
        received += len(data)
        if received > limit:
            # Refused before the chunk is written. The rest of a finite upload is read and
            # dropped first, because a status that reaches grpc-python's client while it is
            # still sending can be replaced by "Internal error from Core" there, and the
            # caller would never learn which limit it hit.
            await _discard(messages, WRITE_DRAIN_BYTES)
            raise LimitExceeded(too_large)
        yield data


async def _discard(messages: AsyncIterator[Any], budget: int) -> None:
    """Read and drop messages until the client stops sending or ``budget`` bytes went by."""
    async for message in messages:
        budget -= message.ByteSize()
        if budget < 0:
            return


def _release_after_trip(
    handle: Any,
    trip: asyncio.Future[Any] | None,
    release: Callable[[Any], None],
    opened: Callable[[Any], Any] = lambda r: r,
) -> None:
    """``release`` ``handle`` and what the worker-thread ``trip`` opened (``opened(result)``), once that trip is over.

    ``release`` must be safe to call twice.
    """

    def finish(_: object = None) -> None:
        if handle is not None:
            release(handle)
        if trip is not None and not trip.cancelled() and trip.exception() is None:
            release(opened(trip.result()))

    if trip is not None and not trip.done():
        trip.add_done_callback(finish)
    else:
        finish()


def _open_and_read(workspace: ws.Workspace, request: pb.ReadFileRequest) -> tuple[FileReader, list[bytes]]:
    """Open the file ``request`` names and read its first batch, the first chunk with the size: one trip to a worker thread."""
    reader = workspace.open_reader(request.path, request.offset, request.length)
    try:
        batch = reader.read(READ_BATCH_BYTES)
        return reader, [file_chunk(batch[0] if batch else b"", reader.size), *map(file_chunk, batch[1:])]
    except BaseException:
        reader.close()
        raise


def _read_more(reader: FileReader) -> tuple[FileReader, list[bytes]]:
    """The next batch of ``reader``: one trip to a worker thread."""
    return reader, list(map(file_chunk, reader.read(READ_BATCH_BYTES)))


async def read_file(workspace: ws.Workspace, request: pb.ReadFileRequest) -> AsyncGenerator[bytes, None]:
    """A file's bytes in ``READ_CHUNK`` chunks, as encoded ``FileChunk`` messages; the first carries the file size.

    The chunks are encoded on the worker thread that reads them (``protos.file_data``):
    the copy that encoding makes overlaps with sending the batch before.
    """
    reader: FileReader | None = None
    reading: asyncio.Future[tuple[FileReader, list[bytes]]] | None = asyncio.ensure_future(
        asyncio.to_thread(_open_and_read, workspace, request)
    )
    try:
        assert reading is not None
        opened, batch = await asyncio.shield(reading)
        reader = opened
        while True:
            # The next batch is read while this one is sent: the disk and the socket overlap.
            reading = None if opened.done else asyncio.ensure_future(asyncio.to_thread(_read_more, opened))
            for chunk in batch:
                yield chunk
            if reading is None:
                break
            _, batch = await asyncio.shield(reading)
    finally:
        _release_after_trip(reader, reading, FileReader.close, opened=lambda result: result[0])


def _write_batch(writer: AtomicWrite, chunks: list[Buffer]) -> AtomicWrite:
    """Append ``chunks`` to ``writer``: one trip to a worker thread."""
    writer.write_all(chunks)
    return writer


async def write_file(
    workspace: ws.Workspace,
    header: pb.WriteFileHeader,
    messages: AsyncIterator[Any],
    max_bytes: int,
    cancelled: Callable[[], bool],
) -> pb.FileInfo:
    """Write the file ``header`` names atomically from the data ``messages`` carry; nothing is written on failure."""
    too_large = (
        f"limit reached: max write bytes is {bytes_text(max_bytes)}, and {header.path} is larger; nothing was written"
    )
    # The temp file is opened (the path resolved, checked and created) while the first data
    # arrives, not after it: a 1 MiB file is all in by the time a trip would start. Data is
    # then gathered into batches that worker threads write, one trip in flight while the
    # next batch arrives; every trip returns the writer, so the last one releases it.
    writing: asyncio.Future[AtomicWrite] = asyncio.ensure_future(
        asyncio.to_thread(workspace.open_for_write, header.path, header.mode, header.create_parents)
    )
    writer: AtomicWrite | None = None
    pending: list[Buffer] = []
    pending_bytes = received = 0
    try:
        async for data in _data_of(messages, "WriteFile", max_bytes, too_large):
            pending.append(data)
            pending_bytes += len(data)
            received += len(data)
            # A trip starts as soon as the last one is over, with whatever arrived meanwhile
            # (so the disk keeps up with the wire and little is left to write at the end),
            # or waits for it once a batch is due. A failed trip is only awaited then: the
            # error is sent once the stream has ended, or is a batch long.
            idle = writing.done() and writing.exception() is None
            if idle or pending_bytes >= WRITE_BATCH_BYTES:
                writer = await asyncio.shield(writing)
                writing = asyncio.ensure_future(asyncio.to_thread(_write_batch, writer, pending))
                pending, pending_bytes = [], 0
        writer = await asyncio.shield(writing)
        if pending:
            writing = asyncio.ensure_future(asyncio.to_thread(_write_batch, writer, pending))
            writer = await asyncio.shield(writing)
        if cancelled():
            # A cancelled upload ends its message stream as a finished one does, and the
            # cancellation is only known a little later (by now, after a trip to a thread):
            # without this check the part that arrived would be committed as the whole file.
            raise asyncio.CancelledError
        if header.HasField("size") and received != header.size:
            # The certain check, for clients that announce the size (a cancellation can
            # still show too late for the one above).
            raise InvalidRequest(
                f"WriteFile announced {header.size} bytes for {header.path} but {received} arrived; nothing was written"
            )
        # Committed here rather than on a thread: a rename and a few calls on one descriptor
        # cost less than the trip, which would also leave a cancellation no time to show.
        replaced = _hold_replaced(writer)
        try:
            return writer.commit()
        finally:
            if replaced is not None:
                _close_later(replaced)
    finally:
        # Drops the temp file (after a commit: only closes it).
        _release_after_trip(writer, writing, AtomicWrite.abort)


def _hold_replaced(writer: AtomicWrite) -> int | None:
    """A descriptor of the file ``writer``'s commit will replace, or None if there is none.

    The commit unlinks the old file, and freeing a large file's pages there took 40-60 ms
    per 100 MB here, on the event loop, before the answer. Held open, the old file is
    freed by its last close instead, which ``_close_later`` does on a worker thread.
    ``O_PATH``: holding needs no permission to read it, and opens no FIFO.
    """
    if writer.resolved.st is None:
        return None
    try:
        return os.open(writer.resolved.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=writer.resolved.dir_fd)
    except OSError:
        return None  # gone meanwhile, or nothing to hold: the commit frees it, as it would anyway


def _close_later(fd: int) -> None:
    """Close ``fd`` on a worker thread, not waiting for it (closing may free a large file)."""
    try:
        asyncio.get_running_loop().run_in_executor(None, os.close, fd)
    except RuntimeError:  # the loop's executor is shutting down
        os.close(fd)


async def export_tar(workspace: ws.Workspace, request: pb.ExportRequest) -> AsyncGenerator[pb.TarChunk, None]:
    """A tar stream of the paths ``request`` names."""
    # Exact bytes become the surrogate-escaped names the walk uses, as os.fsdecode makes them.
    paths = [*request.paths, *(os.fsdecode(raw) for raw in request.raw_paths)]
    chunks = workspace.export_tar(paths)
    try:
        while (data := await asyncio.to_thread(next, chunks, None)) is not None:
            yield pb.TarChunk(data=data)
    finally:
        await asyncio.to_thread(chunks.close)


async def import_tar(
    workspace: ws.Workspace, spool_dir: Path, messages: AsyncIterator[pb.ImportRequest]
) -> pb.ImportResponse:
    """Unpack the tar stream the data ``messages`` carry into the workspace."""
    # Spooled to disk first (in ``spool_dir``): tarfile wants a file, and a half-received
    # stream must not leave a half-written workspace behind.
    spool = spool_dir / f"import-{secrets.token_hex(6)}.tar"
    too_large = f"limit reached: max import size is {bytes_text(MAX_IMPORT_BYTES)}, and this tar stream is larger"
    try:
        with open(spool, "wb") as handle:
            async for data in _data_of(messages, "Import", MAX_IMPORT_BYTES, too_large):
                await asyncio.to_thread(handle.write, data)
        files, total = await asyncio.to_thread(workspace.import_tar, spool)
        return pb.ImportResponse(files=files, bytes=total)
    finally:
        with contextlib.suppress(OSError):
            spool.unlink()
