"""WriteFile's data messages taken off the wire without protobuf's copies.

A data message is one field, ``data`` (field 2, length-delimited), and nearly all
of its bytes are file data. Parsed by protobuf, each one's bytes were copied into
the message and copied again by every read of ``message.data``: two copies of
every byte of a 100 MB upload, which the host paid on top of the socket's and the
disk's, and about a sixth of its time in all. A message that is exactly one
``data`` field becomes a ``DataMessage`` whose ``data`` is a view of the bytes
gRPC received; anything else (the header, or a data message with other fields
beside it) is parsed by protobuf as before, so what a request means is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from protos.tether.sandbox.v1 import sandbox_pb2 as pb

DATA_TAG = b"\x12"
"""The first byte of an encoded ``WriteFileRequest.data``: field 2, wire type 2 (length-delimited)."""

_MAX_LENGTH_BYTES = 5
"""Bytes of a varint long enough for any message gRPC lets in (under 4 GiB)."""


class DataMessage:
    """A WriteFile data message whose ``data`` is a view of the received bytes, not a copy."""

    __slots__ = ("_size", "data")

    def __init__(self, raw: bytes, start: int) -> None:
        """The data of ``raw`` (one encoded data message) from offset ``start``."""
        self.data = memoryview(raw)[start:]
        """The file data, a view of the received message."""
        self._size = len(raw)

    def WhichOneof(self, group: str) -> str:  # noqa: N802 - the protobuf message method it stands in for
        """``"data"``: which part of the ``part`` oneof this message is."""
        return "data"

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf message method it stands in for
        """The encoded size of the message, as protobuf reports it."""
        return self._size


def read_write_request(raw: bytes) -> pb.WriteFileRequest | DataMessage:
    """Decode one WriteFile message: a plain data message as a ``DataMessage``, any other through protobuf."""
    if raw[:1] == DATA_TAG:
        length = shift = 0
        for index in range(1, min(len(raw), 1 + _MAX_LENGTH_BYTES)):
            byte = raw[index]
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                if index + 1 + length == len(raw):
                    return DataMessage(raw, index + 1)
                break
    return pb.WriteFileRequest.FromString(raw)


def serve_write_file(server: grpc.aio.Server, service_name: str, write_file: Callable[..., Any]) -> None:
    """Serve ``service_name``'s WriteFile with ``write_file``, its messages decoded by ``read_write_request``.

    Called after the generated registration of the service: a method registered
    again replaces its earlier handler (a test checks that it does).
    """
    handler = grpc.stream_unary_rpc_method_handler(
        write_file, request_deserializer=read_write_request, response_serializer=pb.FileInfo.SerializeToString
    )
    server.add_registered_method_handlers(service_name, {"WriteFile": handler})
