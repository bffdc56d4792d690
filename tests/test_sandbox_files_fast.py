"""ReadFile and WriteFile past their batching: real host, real gRPC over TCP, real files.

The host reads and writes files in batches on worker threads, with one batch in
flight while the next is sent or received, and replaces an existing file by
swapping the new one in (``renameat2(RENAME_EXCHANGE)``). These tests cross
every batch and chunk boundary, check what a replaced file's open readers see,
and check that a call cancelled while a batch is being written leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from agent.sandbox_client import WRITE_CHUNK, SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox import transfers
from remote_sandbox.file_reader import READ_CHUNK
from tests.fixtures.sandbox_host import RunningHost, host_workspace, in_process_host

WAIT_S = 15.0
"""Bound on every wait."""

_IN_CREATE = 0x100
"""inotify: a name was created in the watched directory."""

_IN_DELETE = 0x200
"""inotify: a name was removed from the watched directory."""


@pytest.fixture
async def local_host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    """An in-process local host with the default limits."""
    async with in_process_host("local", tmp_path / "host-state") as host:
        yield host


class DirectoryWatch:
    """Names created and removed in one directory, from inotify (so a test waits on the event, not a timer)."""

    def __init__(self, directory: Path) -> None:
        """Start watching ``directory``."""
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_CREATE | _IN_DELETE) < 0:
            raise OSError(ctypes.get_errno(), "inotify is not available")
        self.pending: list[tuple[str, str]] = []
        """Events read but not returned yet."""

    def next_event(self, timeout: float) -> tuple[str, str]:
        """The next ``("created" | "removed", name)`` (blocking, at most ``timeout`` seconds)."""
        if not self.pending:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            assert ready, f"nothing happened in the directory within {timeout} s"
            data = os.read(self.fd, 4096)
            while data:
                _, mask, _, length = struct.unpack_from("iIII", data)
                name = data[16 : 16 + length].rstrip(b"\0").decode()
                self.pending.append(("created" if mask & _IN_CREATE else "removed", name))
                data = data[16 + length :]
        return self.pending.pop(0)

    def close(self) -> None:
        """Stop watching."""
        os.close(self.fd)


@pytest.mark.parametrize(
    "size",
    [0, 1, READ_CHUNK, READ_CHUNK + 1, 2 * transfers.WRITE_BATCH_BYTES + 3 * WRITE_CHUNK + 123],
    ids=["empty", "one-byte", "one-chunk", "chunk-plus-one", "many-batches"],
)
async def test_files_round_trip_across_chunks_and_batches(local_host: RunningHost, size: int) -> None:
    data = os.urandom(size)
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
        info = await client.write_file(sandbox.sandbox_id, "blob.bin", data, mode=0o640)
        assert (info.size, info.mode & 0o777) == (size, 0o640)
        assert await client.read_file(sandbox.sandbox_id, "blob.bin") == data
        # Ranges that start and end inside chunks, across chunk and batch boundaries, and past the end.
        batch = transfers.READ_BATCH_BYTES
        for offset, length in [
            (0, 1),
            (READ_CHUNK - 7, 20),
            (batch - 5, READ_CHUNK + 10),
            (batch + 3, 0),
            (size - 3, 100),
            (size + 10, 5),
        ]:
            if offset < 0:
                continue
            expected = data[offset : offset + length] if length else data[offset:]
            assert await client.read_file(sandbox.sandbox_id, "blob.bin", offset=offset, length=length) == expected, (
                offset,
                length,
            )
    workspace = host_workspace(local_host, sandbox.sandbox_id)
    assert os.listdir(workspace) == ["blob.bin"], "no temp file may stay"
    assert (workspace / "blob.bin").read_bytes() == data


async def test_overwrite_swaps_the_file_whole_and_open_readers_keep_the_old_one(local_host: RunningHost) -> None:
    old, new = os.urandom(3 * WRITE_CHUNK), os.urandom(WRITE_CHUNK + 5)
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
        await client.write_file(sandbox.sandbox_id, "f.bin", old, mode=0o600)
        workspace = host_workspace(local_host, sandbox.sandbox_id)
        with open(workspace / "f.bin", "rb") as reader:
            info = await client.write_file(sandbox.sandbox_id, "f.bin", new, mode=0o644)
            # Replaced by a new file, not written in place: the open reader still has the old one.
            assert reader.read() == old
        assert (info.size, info.mode & 0o777) == (len(new), 0o644)
        assert await client.read_file(sandbox.sandbox_id, "f.bin") == new
        # Through a symlink inside the workspace, the link stays and its target is replaced.
        os.symlink("f.bin", workspace / "link")
        await client.write_file(sandbox.sandbox_id, "link", b"through the link")
        assert os.readlink(workspace / "link") == "f.bin"
        assert await client.read_file(sandbox.sandbox_id, "f.bin") == b"through the link"
    assert sorted(os.listdir(workspace)) == ["f.bin", "link"], "no temp file and no swapped-out file may stay"


def _held_deleted_files(directory: Path) -> list[str]:
    """Files under ``directory`` that are removed but still open in this process (the in-process host)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{directory}/") and target.endswith(" (deleted)"):
                held.append(target)
    return held


async def test_a_replaced_file_is_let_go_after_the_overwrite_is_answered(local_host: RunningHost) -> None:
    """The host frees a replaced file after answering (it may take a while for a large one), but it frees it."""
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
        workspace = host_workspace(local_host, sandbox.sandbox_id)
        for _ in range(5):
            await client.write_file(sandbox.sandbox_id, "f.bin", os.urandom(WRITE_CHUNK))
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while held := _held_deleted_files(workspace):
            assert asyncio.get_running_loop().time() < deadline, f"the host still holds replaced files: {held}"
            await asyncio.sleep(0.01)  # a bounded poll: the closes run on worker threads, with no event to wait on


async def test_a_write_cancelled_while_a_batch_is_written_leaves_no_temp_file(local_host: RunningHost) -> None:
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
    workspace = host_workspace(local_host, sandbox.sandbox_id)
    # The size is announced, as tether's client does: without it, a cancellation the host learns of only
    # after the stream has ended can still be taken for the end of a whole file (see write_file).
    header = pb.WriteFileHeader(sandbox_id=sandbox.sandbox_id, path="partial.bin", size=4 * transfers.WRITE_BATCH_BYTES)
    never = asyncio.Event()

    async def messages() -> AsyncIterator[pb.WriteFileRequest]:
        """A header and more than a batch of data, then nothing: the call hangs until cancelled."""
        yield pb.WriteFileRequest(header=header)
        for _ in range(transfers.WRITE_BATCH_BYTES // WRITE_CHUNK + 1):
            yield pb.WriteFileRequest(data=b"p" * WRITE_CHUNK)
        await never.wait()

    watch = DirectoryWatch(workspace)
    try:
        async with grpc.aio.insecure_channel(local_host.target.removeprefix("grpc://")) as channel:
            call = pb_grpc.SandboxStub(channel).WriteFile(
                messages(), metadata=(("authorization", f"Bearer {local_host.token}"),), timeout=WAIT_S
            )
            # The temp file was made (on a worker thread) once the header came in.
            kind, created = await asyncio.to_thread(watch.next_event, WAIT_S)
            assert kind == "created" and created.startswith(".partial.bin.tether-") and created.endswith(".tmp"), (
                created
            )
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        # The host drops the temp file once its thread is done with it.
        assert await asyncio.to_thread(watch.next_event, WAIT_S) == ("removed", created)
    finally:
        watch.close()
    assert os.listdir(workspace) == []


@pytest.mark.parametrize("sent", [5, 15])
async def test_an_upload_that_is_not_the_size_it_announced_writes_nothing(local_host: RunningHost, sent: int) -> None:
    """A stream that ends early (a cancelled client looks the same to the host) or runs long is refused."""
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
        await client.write_file(sandbox.sandbox_id, "kept.txt", b"the old content\n")
        header = pb.WriteFileHeader(sandbox_id=sandbox.sandbox_id, path="kept.txt", size=10)
        async with grpc.aio.insecure_channel(local_host.target.removeprefix("grpc://")) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.SandboxStub(channel).WriteFile(
                    iter([pb.WriteFileRequest(header=header), pb.WriteFileRequest(data=b"x" * sent)]),
                    metadata=(("authorization", f"Bearer {local_host.token}"),),
                    timeout=WAIT_S,
                )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"announced 10 bytes for kept.txt but {sent} arrived" in (refused.value.details() or "")
        assert await client.read_file(sandbox.sandbox_id, "kept.txt") == b"the old content\n"
        # The client announces the size itself, and an empty file is a size like any other.
        await client.write_file(sandbox.sandbox_id, "empty.txt", b"")
        assert await client.read_file(sandbox.sandbox_id, "empty.txt") == b""
    assert sorted(os.listdir(host_workspace(local_host, sandbox.sandbox_id))) == ["empty.txt", "kept.txt"]
