"""File data messages encoded and decoded without protobuf's copies, shared by both ends of the contract.

``WriteFileRequest.data`` and ``FileChunk`` carry nearly all the bytes of a file
transfer. Through protobuf, a message made from a chunk copies it, encoding it
copies it again, decoding copies it, and every read of its bytes field copies it
once more: four copies of every byte beside the socket's, which cost a 100 MB
WriteFile about a third of its speed and a 1 MiB ReadFile about a millisecond.
Here a message is encoded by joining tag, length and data (one copy), and a
message that holds only data (and, for a ``FileChunk``, a ``file_size``) is
decoded as a view of the received bytes (no copy). The bytes on the wire are
protobuf's own, byte for byte: either end may be a plain protobuf peer, and any
message of another shape is handed to protobuf, so its meaning never changes.
"""

from __future__ import annotations

from protos.tether.sandbox.v1 import sandbox_pb2 as pb

Buffer = bytes | memoryview
"""File data: bytes, or a view of a received message."""

WRITE_DATA_TAG = 0x12
"""The first byte of ``WriteFileRequest.data``: field 2, length-delimited."""

CHUNK_DATA_TAG = 0x0A
"""The first byte of ``FileChunk.data``: field 1, length-delimited."""

CHUNK_SIZE_TAG = 0x10
"""The first byte of ``FileChunk.file_size``: field 2, varint."""

_MAX_VARINT_BYTES = 10
"""Bytes of the longest varint (a 64-bit value)."""


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, position: int) -> tuple[int, int] | None:
    """The varint at ``position`` of ``raw`` and the position after it, or None if it is cut short."""
    value = shift = 0
    for index in range(position, min(len(raw), position + _MAX_VARINT_BYTES)):
        byte = raw[index]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, index + 1
    return None


def _data_span(raw: bytes, tag: int) -> tuple[int, int] | None:
    """Where the data of the length-delimited field ``tag`` that starts ``raw`` begins and ends, if it does."""
    if not raw or raw[0] != tag:
        return None
    length = _read_varint(raw, 1)
    if length is None or length[1] + length[0] > len(raw):
        return None
    return length[1], length[1] + length[0]


def write_data(data: Buffer) -> bytes:
    """``WriteFileRequest(data=data)``, encoded."""
    return b"".join((bytes((WRITE_DATA_TAG,)), varint(len(data)), data))


def file_chunk(data: Buffer, file_size: int = 0) -> bytes:
    """``FileChunk(data=data, file_size=file_size)``, encoded (fields at their default are left out, as protobuf does)."""
    parts: list[Buffer] = [bytes((CHUNK_DATA_TAG,)), varint(len(data)), data] if data else []
    if file_size:
        parts += [bytes((CHUNK_SIZE_TAG,)), varint(file_size)]
    return b"".join(parts)


def file_chunk_data(raw: bytes) -> Buffer:
    """The data of an encoded ``FileChunk``: a view of ``raw`` when it holds data (and a file size) only."""
    span = _data_span(raw, CHUNK_DATA_TAG)
    if span is not None:
        start, end = span
        if end == len(raw):
            return memoryview(raw)[start:]
        if raw[end] == CHUNK_SIZE_TAG and (size := _read_varint(raw, end + 1)) is not None and size[1] == len(raw):
            return memoryview(raw)[start:end]
    return pb.FileChunk.FromString(raw).data


class DataMessage:
    """A ``WriteFileRequest`` that holds only data, its ``data`` a view of the received bytes."""

    __slots__ = ("_size", "data")

    def __init__(self, raw: bytes, start: int) -> None:
        """The data of ``raw`` (one encoded data message) from offset ``start``."""
        self.data = memoryview(raw)[start:]
        """The file data, a view of the received message."""
        self._size = len(raw)

    def WhichOneof(self, group: str) -> str:  # noqa: N802 - the protobuf method it stands in for
        """``"data"``: the part of the ``part`` oneof this message holds."""
        return "data"

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf method it stands in for
        """The encoded size of the message, as protobuf reports it."""
        return self._size


def read_write_request(raw: bytes) -> pb.WriteFileRequest | DataMessage:
    """Decode a ``WriteFileRequest``: one that holds only data as a ``DataMessage``, any other through protobuf."""
    span = _data_span(raw, WRITE_DATA_TAG)
    if span is not None and span[1] == len(raw):
        return DataMessage(raw, span[0])
    return pb.WriteFileRequest.FromString(raw)
