"""ReadFile and WriteFile served with file data off protobuf's copying path (``protos.file_data``).

The generated registration decodes every WriteFile message and encodes every
ReadFile chunk through protobuf. These handlers, registered over it, decode
WriteFile's data messages as views of the received bytes, and send the ReadFile
chunks that ``transfers.read_file`` encodes itself as they are.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from protos.file_data import read_write_request
from protos.tether.sandbox.v1 import sandbox_pb2 as pb


def _encoded(message: bytes | pb.FileChunk) -> bytes:
    """A ReadFile response as bytes: encoded already, or by protobuf."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def serve_file_transfers(server: grpc.aio.Server, service_name: str, service: Any) -> None:
    """Serve ``service_name``'s ReadFile and WriteFile from ``service`` with the copy-free coding.

    Called after the generated registration of the service: a method registered
    again replaces its earlier handler (tests/test_sandbox_file_data.py checks that it does).
    """
    handlers = {
        "ReadFile": grpc.unary_stream_rpc_method_handler(
            service.ReadFile, request_deserializer=pb.ReadFileRequest.FromString, response_serializer=_encoded
        ),
        "WriteFile": grpc.stream_unary_rpc_method_handler(
            service.WriteFile,
            request_deserializer=read_write_request,
            response_serializer=pb.FileInfo.SerializeToString,
        ),
    }
    server.add_registered_method_handlers(service_name, handlers)
