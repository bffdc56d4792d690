"""What a client and the resident process say to each other over its unix socket.

A request is one length-prefixed JSON object, sent in a single ``sendmsg``
that also carries file descriptors: ``{"v", "op": "run", "argv", "cwd",
"env"}`` with the client's stdin, stdout and stderr, or ``{"v", "op":
"status"}`` with none. Answers are JSON lines: for a run, ``{"pid"}`` once the
child is forked, then ``{"exit"}`` when it is done; for a status, one object
describing the resident process (see ``server.Resident.describe``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from typing import BinaryIO

PROTOCOL = 2
"""Bumped on any change to the messages; it is part of the socket's name, so old and new never meet."""

MAX_REQUEST = 1 << 20
"""A request (the client's whole environment included) larger than this is refused."""

_HEADER = struct.Struct("!I")


class WireError(Exception):
    """A request or answer that does not follow this format."""


def send_request(sock: socket.socket, request: dict, fds: list[int] | None = None) -> None:
    """Send one request, with ``fds`` riding along."""
    body = json.dumps({"v": PROTOCOL, **request}).encode()
    socket.send_fds(sock, [_HEADER.pack(len(body)) + body], fds or [])


def receive_request(conn: socket.socket, max_fds: int = 3) -> tuple[dict, list[int]]:
    """Read one request and the descriptors that came with it (the caller owns and closes them)."""
    head, fds, _flags, _addr = socket.recv_fds(conn, 65536, max_fds)
    try:
        if not head:
            raise EOFError("no request (a client that only looked)")
        if len(head) < _HEADER.size:
            raise WireError("request cut short")
        (length,) = _HEADER.unpack(head[: _HEADER.size])
        if length > MAX_REQUEST:
            raise WireError(f"request of {length} bytes is too large")
        body = head[_HEADER.size :]
        while len(body) < length:
            more = conn.recv(length - len(body))
            if not more:
                raise WireError("request cut short")
            body += more
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise WireError(f"request is not JSON: {exc}") from None
        if not isinstance(request, dict) or request.get("v") != PROTOCOL:
            raise WireError(f"protocol mismatch (want {PROTOCOL})")
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return request, fds


def send_message(conn: socket.socket, message: dict) -> None:
    """Send one answer line."""
    conn.sendall(json.dumps(message).encode() + b"\n")


def read_message(reader: BinaryIO) -> dict | None:
    """The next answer line, or None once the other side hung up."""
    while True:
        try:
            line = reader.readline()
        except InterruptedError:
            continue
        if not line:
            return None
        try:
            return json.loads(line)
        except ValueError:
            raise WireError(f"answer is not JSON: {line[:200]!r}") from None
