"""WriteFile's data messages off the wire without copies: decoded as protobuf would, and used by the host.

The client encodes data messages itself and the host takes a plain data message
as a view of the bytes gRPC received (``remote_sandbox.write_messages``); any
other message goes through protobuf. These tests hold both ends to protobuf's
own encoding, and check over real gRPC that the host's WriteFile does decode
with the view (a later registration of a method must replace the generated one).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from agent.sandbox_client import WRITE_CHUNK, SandboxClient, _varint
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox import write_messages
from remote_sandbox.write_messages import DataMessage, read_write_request
from tests.fixtures.sandbox_host import RunningHost, host_workspace, in_process_host

SIZES = [0, 1, 127, 128, 300, 16383, 16384, WRITE_CHUNK, (16 << 20) + 1]
"""Data sizes around every varint length boundary a message can reach, and past the max message size."""


@pytest.fixture
async def local_host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    """An in-process local host with the default limits."""
    async with in_process_host("local", tmp_path / "host-state") as host:
        yield host


@pytest.mark.parametrize("size", SIZES)
def test_a_plain_data_message_is_a_view_with_protobufs_meaning(size: int) -> None:
    data = os.urandom(size)
    raw = pb.WriteFileRequest(data=data).SerializeToString()
    # The client's own encoding is protobuf's, byte for byte.
    assert b"".join((write_messages.DATA_TAG, _varint(size), data)) == raw
    message = read_write_request(raw)
    assert isinstance(message, DataMessage)
    assert isinstance(message.data, memoryview) and message.data.obj is raw, "a view of the received bytes"
    assert bytes(message.data) == data
    assert message.WhichOneof("part") == "data"
    assert message.ByteSize() == pb.WriteFileRequest(data=data).ByteSize()


@pytest.mark.parametrize(
    "message",
    [
        pb.WriteFileRequest(header=pb.WriteFileHeader(sandbox_id="s", path="a/b.txt", mode=0o600, size=3)),
        pb.WriteFileRequest(),
    ],
    ids=["header", "empty"],
)
def test_any_other_message_goes_through_protobuf(message: pb.WriteFileRequest) -> None:
    decoded = read_write_request(message.SerializeToString())
    assert isinstance(decoded, pb.WriteFileRequest) and decoded == message


def test_a_data_message_with_more_after_it_means_what_protobuf_says() -> None:
    """Data then a header is a header (the last of a oneof wins); the view is only for data alone."""
    header = pb.WriteFileRequest(header=pb.WriteFileHeader(path="x"))
    raw = pb.WriteFileRequest(data=b"abc").SerializeToString() + header.SerializeToString()
    decoded = read_write_request(raw)
    assert isinstance(decoded, pb.WriteFileRequest) and decoded.WhichOneof("part") == "header"
    assert decoded == pb.WriteFileRequest.FromString(raw)


@pytest.mark.parametrize("raw", [b"\x12\x05abc", b"\x12\xff\xff\xff\xff\xff\xff"], ids=["short", "endless-length"])
def test_a_broken_data_message_is_refused_as_protobuf_refuses_it(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        read_write_request(raw)


async def test_the_host_takes_writefile_data_as_views(local_host: RunningHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over real gRPC: every data message the client sends reaches the host's WriteFile as a view."""
    made: list[int] = []

    class CountedDataMessage(DataMessage):
        """A ``DataMessage`` that counts itself."""

        __slots__ = ()

        def __init__(self, raw: bytes, start: int) -> None:
            """Count, then be a ``DataMessage``."""
            made.append(len(raw) - start)
            super().__init__(raw, start)

    monkeypatch.setattr(write_messages, "DataMessage", CountedDataMessage)
    data = os.urandom(3 * WRITE_CHUNK + 5)
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
        info = await client.write_file(sandbox.sandbox_id, "viewed.bin", data)
    assert info.size == len(data)
    assert made == [WRITE_CHUNK, WRITE_CHUNK, WRITE_CHUNK, 5]
    assert (host_workspace(local_host, sandbox.sandbox_id) / "viewed.bin").read_bytes() == data
