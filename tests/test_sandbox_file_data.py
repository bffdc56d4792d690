"""File data coded without protobuf's copies (``protos.file_data``): protobuf's bytes, protobuf's meaning.

Both ends encode data messages themselves and decode a message that holds only
data as a view of the bytes gRPC received; any other message goes through
protobuf. These tests hold the coding to protobuf's own, byte for byte, and
check over real gRPC that the host's ReadFile and WriteFile do use it (a later
registration of a method must replace the generated one) and that a plain
protobuf client still reads and writes files as before.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest
from google.protobuf.message import DecodeError

from agent.sandbox_client import WRITE_CHUNK, SandboxClient
from protos import file_data
from protos.file_data import DataMessage, file_chunk, file_chunk_data, read_write_request, write_data
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox.file_reader import READ_CHUNK
from tests.fixtures.sandbox_host import RunningHost, host_workspace, in_process_host

SIZES = [0, 1, 127, 128, 300, 16383, 16384, WRITE_CHUNK, (16 << 20) + 1]
"""Data sizes around every varint length boundary a message can reach, and past the max message size."""


@pytest.fixture
async def local_host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    """An in-process local host with the default limits."""
    async with in_process_host("local", tmp_path / "host-state") as host:
        yield host


@pytest.mark.parametrize("size", SIZES)
def test_a_data_message_is_encoded_as_protobuf_does_and_decoded_as_a_view(size: int) -> None:
    data = os.urandom(size)
    raw = write_data(memoryview(data))
    assert raw == pb.WriteFileRequest(data=data).SerializeToString()
    message = read_write_request(raw)
    assert isinstance(message, DataMessage)
    assert isinstance(message.data, memoryview) and message.data.obj is raw, "a view of the received bytes"
    assert bytes(message.data) == data
    assert message.WhichOneof("part") == "data"
    assert message.ByteSize() == pb.WriteFileRequest(data=data).ByteSize()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("file_size", [0, 1, 300, 1 << 40])
def test_a_file_chunk_is_encoded_as_protobuf_does_and_its_data_decoded_as_a_view(size: int, file_size: int) -> None:
    data = os.urandom(size)
    raw = file_chunk(data, file_size)
    assert raw == pb.FileChunk(data=data, file_size=file_size).SerializeToString()
    decoded = file_chunk_data(raw)
    assert bytes(decoded) == data
    if size:
        assert isinstance(decoded, memoryview) and decoded.obj is raw, "a view of the received bytes"


@pytest.mark.parametrize(
    "message",
    [
        pb.WriteFileRequest(header=pb.WriteFileHeader(sandbox_id="s", path="a/b.txt", mode=0o600, size=3)),
        pb.WriteFileRequest(),
    ],
    ids=["header", "empty"],
)
def test_any_other_write_message_goes_through_protobuf(message: pb.WriteFileRequest) -> None:
    decoded = read_write_request(message.SerializeToString())
    assert isinstance(decoded, pb.WriteFileRequest) and decoded == message


def test_a_data_message_with_more_after_it_means_what_protobuf_says() -> None:
    """Data then a header is a header (the last of a oneof wins); the view is only for data alone."""
    raw = write_data(b"abc") + pb.WriteFileRequest(header=pb.WriteFileHeader(path="x")).SerializeToString()
    decoded = read_write_request(raw)
    assert isinstance(decoded, pb.WriteFileRequest) and decoded == pb.WriteFileRequest.FromString(raw)
    assert decoded.WhichOneof("part") == "header"
    # A chunk whose data comes twice is the last data, as protobuf reads it.
    twice = file_chunk(b"first") + file_chunk(b"second", 7)
    assert bytes(file_chunk_data(twice)) == b"second" == pb.FileChunk.FromString(twice).data


@pytest.mark.parametrize("raw", [b"\x12\x05abc", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_a_broken_message_is_refused_as_protobuf_refuses_it(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        read_write_request(raw)
    with pytest.raises(DecodeError):
        file_chunk_data(bytes([file_data.CHUNK_DATA_TAG]) + raw[1:])


async def test_the_host_codes_file_data_without_protobuf(
    local_host: RunningHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real gRPC: WriteFile's data reaches the host as views, and ReadFile's chunks leave it encoded by hand."""
    viewed: list[int] = []
    encoded: list[int] = []

    class CountedDataMessage(DataMessage):
        """A ``DataMessage`` that counts itself."""

        __slots__ = ()

        def __init__(self, raw: bytes, start: int) -> None:
            """Count, then be a ``DataMessage``."""
            viewed.append(len(raw) - start)
            super().__init__(raw, start)

    def counted_file_chunk(data: file_data.Buffer, file_size: int = 0) -> bytes:
        """``file_chunk``, counted."""
        encoded.append(len(data))
        return file_chunk(data, file_size)

    monkeypatch.setattr(file_data, "DataMessage", CountedDataMessage)
    monkeypatch.setattr("remote_sandbox.transfers.file_chunk", counted_file_chunk)
    data = os.urandom(3 * WRITE_CHUNK + 5)
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
        info = await client.write_file(sandbox.sandbox_id, "viewed.bin", data)
        assert await client.read_file(sandbox.sandbox_id, "viewed.bin") == data
    assert info.size == len(data)
    assert viewed == [WRITE_CHUNK, WRITE_CHUNK, WRITE_CHUNK, 5]
    assert encoded == [READ_CHUNK] * (len(data) // READ_CHUNK) + [len(data) % READ_CHUNK]
    assert (host_workspace(local_host, sandbox.sandbox_id) / "viewed.bin").read_bytes() == data


async def test_a_plain_protobuf_client_reads_and_writes_as_before(local_host: RunningHost) -> None:
    data = os.urandom(2 * READ_CHUNK + 3)
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
    metadata = (("authorization", f"Bearer {local_host.token}"),)
    header = pb.WriteFileHeader(sandbox_id=sandbox.sandbox_id, path="plain.bin", size=len(data))
    async with grpc.aio.insecure_channel(local_host.target.removeprefix("grpc://")) as channel:
        stub = pb_grpc.SandboxStub(channel)
        requests = [
            pb.WriteFileRequest(header=header),
            pb.WriteFileRequest(data=data[:5]),
            pb.WriteFileRequest(data=data[5:]),
        ]
        info = await stub.WriteFile(iter(requests), metadata=metadata)
        assert info.size == len(data)
        request = pb.ReadFileRequest(sandbox_id=sandbox.sandbox_id, path="plain.bin")
        chunks = [chunk async for chunk in stub.ReadFile(request, metadata=metadata)]
    assert chunks[0].file_size == len(data) and [c.file_size for c in chunks[1:]] == [0, 0]
    assert b"".join(chunk.data for chunk in chunks) == data


_FAULTS_PER_READ = """
import os, resource, sys
from agent.sandbox_client import SandboxClient
if sys.argv[1] == "client":
    SandboxClient("grpc://127.0.0.1:1")  # made, never connected: the process now keeps freed memory
data = os.urandom(1 << 20)

def read_like_the_client():
    # What a 1 MiB ReadFile allocates and frees: four received chunks, then the joined file.
    return len(b"".join([data[start : start + (256 << 10)] for start in range(0, 1 << 20, 256 << 10)]))

for _ in range(3):
    read_like_the_client()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    read_like_the_client()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the knobs are glibc's")
def test_a_client_process_reuses_freed_file_data_instead_of_faulting_it_in_again() -> None:
    """With glibc's defaults a 1 MiB read faults in ~480 fresh pages; once a client exists, none."""

    def faults(mode: str) -> float:
        result = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_READ, mode],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return float(result.stdout)

    assert faults("bare") > 200, "the allocation pattern no longer shows the faults: the test proves nothing"
    assert faults("client") < 10
