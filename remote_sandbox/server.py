"""The sandbox host: a ``grpc.aio`` server of the ``tether.sandbox.v1.Sandbox`` service.

It authenticates every call with a bearer token (``auth``), keeps each
tenant's sandboxes apart, hands lifecycle and commands to a provider, and does
file operations itself on the workspace directories (``workspace``). Provider
errors become status codes with one meaning each (see the .proto); a non-zero
exit code is a result, never an error. One log line per RPC goes to the
``remote_sandbox.rpc`` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import posixpath
import secrets
import shutil
import socket
import stat
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox import workspace as ws
from remote_sandbox.auth import BearerTokenInterceptor, TokenTable
from remote_sandbox.manifest import ManifestState
from remote_sandbox.providers.base import (
    ExecSpec,
    InvalidRequest,
    LimitExceeded,
    PermissionDenied,
    Provider,
    ProviderError,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxRecord,
)

log = logging.getLogger("remote_sandbox.server")
rpc_log = logging.getLogger("remote_sandbox.rpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Sandbox"].full_name
"""``tether.sandbox.v1.Sandbox``."""

KEPT_DIRECT_CACHES = 32
"""Direct workspaces whose hash caches outlive their sandboxes (least recently provisioned go first)."""

DEFAULT_WORKDIR = "/workspace"
"""The workspace path in the sandbox when the recipe names none."""

DEFAULT_EXEC_TIMEOUT_S = 120.0
"""A command's time limit when the request gives none."""

DEFAULT_OUTPUT_CAP = 1 << 20
"""Bytes of output streamed when the request gives no cap."""

MAX_MESSAGE_BYTES = 16 << 20
"""Largest gRPC message either way; file data travels in far smaller chunks."""

TRANSPORT_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES
"""What gRPC itself lets in: a message between this and ``MAX_MESSAGE_BYTES`` reaches
the handler, which refuses it with a message naming the limit. Past this, gRPC refuses
it with its own words (still RESOURCE_EXHAUSTED)."""

DEFAULT_MAX_WRITE_BYTES = 1 << 30
"""Largest file WriteFile accepts unless configured otherwise."""

WRITE_DRAIN_BYTES = 256 << 20
"""How much of a refused upload (WriteFile, Import) is read and dropped before the
refusal is sent; an endless stream is cut off here."""

DEFAULT_MAX_EXECS_PER_SANDBOX = 64
"""Commands one sandbox may run at once unless configured otherwise."""

DEFAULT_MAX_SANDBOXES_PER_TENANT = 64
"""Live sandboxes one tenant may have unless configured otherwise."""

READ_BATCH_BYTES = 4 << 20
"""Bytes ReadFile reads per trip to a worker thread; the next batch is read while this one is sent."""

WRITE_BATCH_BYTES = 4 << 20
"""Bytes WriteFile gathers before a trip to a worker thread writes them; a smaller file takes one trip in all."""

MAX_IMPORT_BYTES = 8 << 30
"""Largest tar stream Import accepts."""

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", TRANSPORT_MESSAGE_BYTES),
    # Pings keep idle connections through NATs and find dead peers; clients ping
    # every 5 s (to find a silent host within 10 s), so allow that and a little more.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 4_000),
    # Two hosts on one port would split the traffic silently: binding must fail instead.
    ("grpc.so_reuseport", 0),
]
"""Channel options of the server, set explicitly."""

_FORBIDDEN_WORKDIRS = ("/proc", "/dev", "/sys", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_STATUS = {
    SandboxNotFound: grpc.StatusCode.NOT_FOUND,
    SandboxNotRunning: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def default_state_dir() -> Path:
    """Where a host keeps its sandboxes unless told otherwise."""
    import platformdirs

    return Path(platformdirs.user_state_dir("tether")) / "sandbox-host"


@dataclass
class HostConfig:
    """How to run a sandbox host."""

    listen: str
    """``HOST:PORT`` (port 0 picks a free one) or ``unix:///path``."""
    provider: str = "local"
    """``local`` or ``docker``."""
    tokens: dict[str, str] = field(default_factory=dict)
    """Bearer token -> tenant. At least one is required."""
    state_dir: Path = field(default_factory=default_state_dir)
    """Sandboxes' directories, the host id and the lock live here."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key``, the server speaks TLS."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    default_image: str = ""
    """docker provider: the image of recipes that name none."""
    destroy_on_exit: bool = True
    """Destroy every sandbox when the host stops (else leave them for inspection)."""
    allow_base: list[Path] = field(default_factory=list)
    """local provider: directories a recipe's ``base`` may be copied from."""
    max_sandboxes_per_tenant: int = DEFAULT_MAX_SANDBOXES_PER_TENANT
    """Provision past this many live sandboxes of one tenant is RESOURCE_EXHAUSTED."""
    max_execs_per_sandbox: int = DEFAULT_MAX_EXECS_PER_SANDBOX
    """Exec past this many commands running at once in one sandbox is RESOURCE_EXHAUSTED."""
    max_write_bytes: int = DEFAULT_MAX_WRITE_BYTES
    """WriteFile of a file larger than this is RESOURCE_EXHAUSTED (checked while it streams in)."""
    reap_interval_s: float = 30.0
    """How often sandboxes idle past their recipe's TTL are looked for."""
    allow_workspace_roots: list[Path] = field(default_factory=list)
    """Directories under which a Provision may name a direct workspace (``--allow-workspace-root``); none = refused."""


class HostStartError(Exception):
    """The host could not start (address in use, state dir locked, bad TLS files...); the message says why."""


@dataclass
class _Entry:
    """A live sandbox as the host tracks it."""

    record: SandboxRecord
    request_key: tuple[str, str, str] | None = None
    active: int = 0
    """Commands and transfers running now; an active sandbox is never reaped."""
    execs: int = 0
    """Commands running now (bounded by ``max_execs_per_sandbox``)."""
    manifests: ManifestState = field(default_factory=ManifestState)
    """The hash cache and the remembered Manifest answers of this sandbox."""

    def touch(self) -> None:
        """Mark the sandbox as used now."""
        self.record.last_used_unix_ms = _now_ms()


@dataclass
class _Call:
    """One RPC being served, for its log line."""

    method: str
    tenant: str = "-"
    sandbox: str = "-"
    status: str = "OK"
    started: float = field(default_factory=time.monotonic)

    def log(self) -> None:
        """Write the RPC's one log line."""
        duration_ms = (time.monotonic() - self.started) * 1000
        rpc_log.info(
            "rpc method=%s tenant=%s sandbox=%s status=%s duration_ms=%.1f",
            self.method,
            self.tenant,
            self.sandbox,
            self.status,
            duration_ms,
        )


class _Refusal(Exception):
    """Ends an RPC with a status code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _now_ms() -> int:
    return int(time.time() * 1000)


def _open_and_read(workspace: ws.Workspace, request: pb.ReadFileRequest) -> tuple[ws.FileReader, list[bytes]]:
    """Open the file ``request`` names and read its first batch: one trip to a worker thread."""
    reader = workspace.open_reader(request.path, request.offset, request.length)
    try:
        return reader, reader.read(READ_BATCH_BYTES)
    except BaseException:
        reader.close()
        raise


def _read_more(reader: ws.FileReader) -> tuple[ws.FileReader, list[bytes]]:
    """The next batch of ``reader``: one trip to a worker thread."""
    return reader, reader.read(READ_BATCH_BYTES)


def _write_batch(
    writer: ws.AtomicWrite | None, open_writer: Callable[[], ws.AtomicWrite], chunks: list[bytes]
) -> ws.AtomicWrite:
    """Open the temp file unless open, and append ``chunks``: one trip to a worker thread."""
    opened = writer is None
    writer = writer or open_writer()
    try:
        writer.write_all(chunks)
        return writer
    except BaseException:
        if opened:
            writer.abort()
        raise


def _release_after_trip(
    handle: Any,
    trip: asyncio.Future[Any] | None,
    release: Callable[[Any], None],
    opened: Callable[[Any], Any] = lambda r: r,
) -> None:
    """``release`` ``handle`` and what the worker-thread ``trip`` opened (``opened(result)``), once that trip is over.

    A cancelled call must not close a file under a thread still using it, so a trip
    still running releases when it ends. ``release`` must be safe to call twice.
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


def _bytes_text(size: int) -> str:
    """``size`` in bytes, with a binary unit when that reads better: ``16777216 bytes (16 MiB)``."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            return f"{size} bytes ({size / (1 << shift):.4g} {unit})"
    return f"{size} bytes"


async def _opening(
    request_iterator: AsyncIterator[Any], method: str, part: str, duty: str
) -> tuple[AsyncIterator[Any], Any]:
    """A client-streaming call's messages and its first one, which must carry ``part`` (it must ``duty``)."""
    messages = aiter(request_iterator)
    first = await anext(messages, None)
    if first is None:
        raise InvalidRequest(f"{method} received no messages; the first must {duty}")
    _check_message_size(first, f"{method} message")
    if first.WhichOneof("part") != part:
        raise InvalidRequest(f"{method}'s first message must {duty}, not data")
    return messages, first


async def _discard(messages: AsyncIterator[Any], budget: int) -> None:
    """Read and drop messages until the client stops sending or ``budget`` bytes went by."""
    async for message in messages:
        budget -= message.ByteSize()
        if budget < 0:
            return


def _check_message_size(message: Any, what: str, size: int | None = None) -> None:
    """Refuse a received message larger than ``MAX_MESSAGE_BYTES``, naming the limit.

    ``size`` may give the size already known (a data message is its data, give or
    take a few bytes): ``ByteSize`` serialises, which costs as much as a copy.
    """
    size = message.ByteSize() if size is None else size
    if size > MAX_MESSAGE_BYTES:
        raise LimitExceeded(
            f"limit reached: max message size is {_bytes_text(MAX_MESSAGE_BYTES)}, and this {what} "
            f"is {size} bytes; send large data in smaller messages"
        )


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message an exception ends an RPC with."""
    if isinstance(exc, _Refusal):
        return exc.code, str(exc)
    for kind, code in _STATUS.items():
        if isinstance(exc, kind):
            return code, str(exc)
    if isinstance(exc, ProviderError):
        return grpc.StatusCode.INTERNAL, f"the sandbox provider failed: {exc}"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, f"the sandbox host is out of disk space: {exc.strerror}"
        if exc.errno in (
            errno.EACCES,
            errno.EPERM,
            errno.EROFS,
            errno.ENAMETOOLONG,
            errno.EISDIR,
            errno.ENOTDIR,
            errno.ELOOP,
        ):
            return grpc.StatusCode.INVALID_ARGUMENT, f"{exc.strerror}: {exc.filename or ''}".rstrip(": ")
    return grpc.StatusCode.INTERNAL, f"internal error in the sandbox host: {type(exc).__name__}: {exc}"


def _unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a handler: authenticate, log one line, turn errors into status codes."""

    @functools.wraps(method)
    async def handler(self: _SandboxService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = self._begin(method.__name__, request, context)
        try:
            self._check_request_size(request, method.__name__)
            return await method(self, call, request, context)
        except asyncio.CancelledError:
            call.status = "CANCELLED"
            raise
        except Exception as exc:
            await self._abort(call, exc, context)
        finally:
            call.log()

    return handler


def _streaming(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """Like ``_unary``, for handlers that stream their responses."""

    @functools.wraps(method)
    async def handler(self: _SandboxService, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = self._begin(method.__name__, request, context)
        try:
            self._check_request_size(request, method.__name__)
            async for response in method(self, call, request, context):
                yield response
        except asyncio.CancelledError:
            call.status = "CANCELLED"
            raise
        except Exception as exc:
            await self._abort(call, exc, context)
        finally:
            call.log()

    return handler


class _SandboxService(pb_grpc.SandboxServicer):
    """The Sandbox service: tenants' sandboxes, commands and files."""

    def __init__(self, host: SandboxHost) -> None:
        self.host = host
        self.provider = host.provider
        self.tokens = host.tokens

    # ----- plumbing

    def _begin(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> _Call:
        call = _Call(method)
        tenant = self.tokens.tenant_from_metadata(context.invocation_metadata())
        if tenant is not None:
            call.tenant = tenant
        sandbox_id = getattr(request, "sandbox_id", "")
        if sandbox_id:
            call.sandbox = sandbox_id
        return call

    @staticmethod
    def _check_request_size(request: Any, method: str) -> None:
        """Refuse a unary request past the max message size (streamed-in requests check each message)."""
        if hasattr(request, "ByteSize"):
            _check_message_size(request, f"{method} request")

    async def _abort(self, call: _Call, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        code, message = _status_of(exc)
        call.status = code.name
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed", call.method, exc_info=exc)
        await context.abort(code, message)

    def _tenant(self, call: _Call) -> str:
        if call.tenant == "-":
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, "authentication failed: no valid bearer token")
        return call.tenant

    def _entry(self, call: _Call, sandbox_id: str) -> _Entry:
        """The caller's sandbox ``sandbox_id``; another tenant's is as absent as a destroyed one."""
        tenant = self._tenant(call)
        call.sandbox = sandbox_id or "-"
        entry = self.host.sandboxes.get(sandbox_id)
        if entry is None or entry.record.tenant != tenant:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r} on this host (destroyed, expired, or never made)")
        entry.touch()
        return entry

    async def _info(self, entry: _Entry) -> pb.SandboxInfo:
        record = entry.record
        running = await self.provider.is_running(record)
        return pb.SandboxInfo(
            sandbox_id=record.sandbox_id,
            state=pb.SandboxInfo.RUNNING if running else pb.SandboxInfo.STOPPED,
            provider=self.provider.name,
            recipe=record.recipe,
            workdir=record.workdir,
            isolation=record.isolation,
            os=record.os,
            created_unix_ms=record.created_unix_ms,
            last_used_unix_ms=record.last_used_unix_ms,
            warnings=record.warnings,
            workspace_dir=record.workspace_dir,
        )

    # ----- lifecycle

    @_unary
    async def Provision(self, call: _Call, request: pb.ProvisionRequest, context: Any) -> pb.SandboxInfo:
        """Create a sandbox from the recipe; the same request_id returns the same sandbox."""
        tenant = self._tenant(call)
        workspace_dir = self.host.check_workspace_dir(request.workspace_dir)
        if not request.request_id:
            sandbox_id = await self.host.provision(tenant, request.recipe, None, workspace_dir)
            return await self._info(self._entry(call, sandbox_id))
        # The directory is part of the request: the same id naming another directory is another request.
        key = (tenant, request.request_id, request.workspace_dir)
        task = self.host.provisioning.get(key)
        if task is None:
            task = asyncio.ensure_future(self.host.provision(tenant, request.recipe, key, workspace_dir))
            self.host.provisioning[key] = task
            task.add_done_callback(functools.partial(self.host.provision_done, key))
        # Shielded: a client that gives up mid-provision can retry with the same
        # request_id and get the sandbox that was being made.
        sandbox_id = await asyncio.shield(task)
        entry = self._entry(call, sandbox_id)
        return await self._info(entry)

    @_unary
    async def GetSandbox(self, call: _Call, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        """Describe one sandbox."""
        return await self._info(self._entry(call, request.sandbox_id))

    @_unary
    async def ListSandboxes(
        self, call: _Call, request: pb.ListSandboxesRequest, context: Any
    ) -> pb.ListSandboxesResponse:
        """The caller's sandboxes."""
        tenant = self._tenant(call)
        entries = [e for e in self.host.sandboxes.values() if e.record.tenant == tenant]
        infos = [await self._info(e) for e in sorted(entries, key=lambda e: e.record.created_unix_ms)]
        return pb.ListSandboxesResponse(sandboxes=infos)

    @_unary
    async def Destroy(self, call: _Call, request: pb.SandboxRef, context: Any) -> pb.DestroyResponse:
        """Destroy a sandbox and everything in it."""
        entry = self._entry(call, request.sandbox_id)
        await self.host.destroy(entry)
        return pb.DestroyResponse()

    @_unary
    async def Touch(self, call: _Call, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        """Mark a sandbox used now, which restarts its idle TTL."""
        return await self._info(self._entry(call, request.sandbox_id))

    # ----- commands

    @_streaming
    async def Exec(self, call: _Call, request: pb.ExecRequest, context: Any) -> AsyncIterator[pb.ExecEvent]:
        """Run a command; stream Started, Output..., Exited."""
        entry = self._entry(call, request.sandbox_id)
        which = request.WhichOneof("command")
        if which is None:
            raise InvalidRequest("the request names no command: set argv or shell")
        spec = ExecSpec(
            argv=list(request.argv.args) if which == "argv" else None,
            shell=request.shell if which == "shell" else None,
            cwd=ws.exec_cwd(entry.record, request.cwd),
            env=dict(request.env),
            stdin=request.stdin,
            timeout_s=request.timeout_ms / 1000 if request.timeout_ms else DEFAULT_EXEC_TIMEOUT_S,
            output_cap=request.output_cap_bytes or DEFAULT_OUTPUT_CAP,
            report_cwd=request.report_cwd,
        )
        limit = self.host.config.max_execs_per_sandbox
        if entry.execs >= limit:
            raise LimitExceeded(
                f"limit reached: max execs per sandbox is {limit}, and sandbox {entry.record.sandbox_id} "
                f"already runs {entry.execs} commands; wait for one to finish"
            )
        # Counted before the first await, so concurrent calls cannot all pass the check.
        entry.execs += 1
        entry.active += 1
        try:
            async for event in self.provider.exec(entry.record, spec):
                yield event
        finally:
            entry.execs -= 1
            entry.active -= 1
            entry.touch()

    # ----- files

    @_streaming
    async def ReadFile(self, call: _Call, request: pb.ReadFileRequest, context: Any) -> AsyncIterator[pb.FileChunk]:
        """Stream a file's bytes in ``workspace.READ_CHUNK`` chunks; the first carries the file size."""
        entry = self._entry(call, request.sandbox_id)
        workspace = ws.Workspace(entry.record)
        reader: ws.FileReader | None = None
        # Each trip to a worker thread is shielded: a cancelled call must not close the file
        # under a thread still reading it, so the last trip closes it when it ends.
        reading: asyncio.Future[tuple[ws.FileReader, list[bytes]]] | None = asyncio.ensure_future(
            asyncio.to_thread(_open_and_read, workspace, request)
        )
        entry.active += 1
        try:
            assert reading is not None
            opened, batch = await asyncio.shield(reading)
            reader = opened
            yield pb.FileChunk(data=batch[0] if batch else b"", file_size=opened.size)
            del batch[:1]
            while True:
                # The next batch is read while this one is sent: the disk and the socket overlap.
                reading = None if opened.done else asyncio.ensure_future(asyncio.to_thread(_read_more, opened))
                for data in batch:
                    yield pb.FileChunk(data=data)
                if reading is None:
                    break
                _, batch = await asyncio.shield(reading)
        finally:
            entry.active -= 1
            _release_after_trip(reader, reading, ws.FileReader.close, opened=lambda result: result[0])

    @_unary
    async def WriteFile(
        self, call: _Call, request_iterator: AsyncIterator[pb.WriteFileRequest], context: Any
    ) -> pb.FileInfo:
        """Write a file atomically from a header and data messages."""
        messages, first = await _opening(request_iterator, "WriteFile", "header", "be the header (path, mode)")
        header = first.header
        limit = self.host.config.max_write_bytes
        entry = self._entry(call, header.sandbox_id)
        open_writer = functools.partial(
            ws.Workspace(entry.record).open_for_write, header.path, header.mode, header.create_parents
        )
        # Data is gathered into batches that worker threads write, one batch in flight while
        # the next arrives. The first trip opens the temp file, so a file smaller than a batch
        # costs one trip in all: each costs about as much as receiving a message. Trips are
        # shielded: a cancelled call must not drop the file under a thread still writing it.
        writer: ws.AtomicWrite | None = None
        writing: asyncio.Future[ws.AtomicWrite] | None = None
        pending: list[bytes] = []
        pending_bytes = received = 0
        entry.active += 1
        try:
            async for message in messages:
                if message.WhichOneof("part") != "data":
                    raise InvalidRequest("WriteFile sent a second header; only data may follow the first")
                data = message.data  # read once: each read of a bytes field copies it
                _check_message_size(message, "WriteFile message", len(data))
                received += len(data)
                if received > limit:
                    # Refused before the chunk is written, and the temp file goes (below). The
                    # rest of a finite upload is read and dropped first, because a status that
                    # reaches grpc-python's client while it is still sending can be replaced
                    # by "Internal error from Core" there, and the caller would never learn
                    # which limit it hit.
                    await _discard(messages, WRITE_DRAIN_BYTES)
                    raise LimitExceeded(
                        f"limit reached: max write bytes is {_bytes_text(limit)}, and {header.path} "
                        "is larger; nothing was written"
                    )
                pending.append(data)
                pending_bytes += len(data)
                if pending_bytes >= WRITE_BATCH_BYTES:
                    if writing is not None:
                        writer = await asyncio.shield(writing)
                    writing = asyncio.ensure_future(asyncio.to_thread(_write_batch, writer, open_writer, pending))
                    pending, pending_bytes = [], 0
            if writing is not None:
                writer = await asyncio.shield(writing)
            if pending or writer is None:
                writing = asyncio.ensure_future(asyncio.to_thread(_write_batch, writer, open_writer, pending))
                writer = await asyncio.shield(writing)
            if context.cancelled():
                # A cancelled upload ends its message stream as a finished one does, and the
                # cancellation is only known a little later (by now, after a trip to a thread):
                # without this check the part that arrived would be committed as the whole file.
                raise asyncio.CancelledError
            if header.HasField("size") and received != header.size:
                # The certain check, for clients that announce the size (a cancellation can
                # still show too late for the one above).
                raise InvalidRequest(
                    f"WriteFile announced {header.size} bytes for {header.path} but {received} arrived; "
                    "nothing was written"
                )
            # Committed here rather than on a thread: a rename and a few calls on one descriptor
            # cost less than the trip, which would also leave a cancellation no time to show.
            return writer.commit()
        finally:
            entry.active -= 1
            # Drops the temp file (after a commit: only closes it).
            _release_after_trip(writer, writing, ws.AtomicWrite.abort)

    @_unary
    async def Stat(self, call: _Call, request: pb.PathRequest, context: Any) -> pb.FileInfo:
        """Describe one path; ``exists`` is false when nothing is there."""
        entry = self._entry(call, request.sandbox_id)
        return await asyncio.to_thread(ws.Workspace(entry.record).stat, request.path)

    @_unary
    async def ListDir(self, call: _Call, request: pb.PathRequest, context: Any) -> pb.ListDirResponse:
        """List a directory."""
        entry = self._entry(call, request.sandbox_id)
        entries = await asyncio.to_thread(ws.Workspace(entry.record).list_dir, request.path)
        return pb.ListDirResponse(entries=entries)

    # ----- workspace snapshots

    @_unary
    async def Manifest(self, call: _Call, request: pb.ManifestRequest, context: Any) -> pb.ManifestResponse:
        """Path, size, mode and sha256 of every file and symlink under the paths, in full or since a token."""
        entry = self._entry(call, request.sandbox_id)
        entry.active += 1
        try:
            return await asyncio.to_thread(ws.Workspace(entry.record).manifest, request, entry.manifests)
        finally:
            entry.active -= 1

    @_streaming
    async def Export(self, call: _Call, request: pb.ExportRequest, context: Any) -> AsyncIterator[pb.TarChunk]:
        """A tar stream of the paths."""
        entry = self._entry(call, request.sandbox_id)
        # Exact bytes become the surrogate-escaped names the walk uses, as os.fsdecode makes them.
        paths = [*request.paths, *(os.fsdecode(raw) for raw in request.raw_paths)]
        chunks = ws.Workspace(entry.record).export_tar(paths)
        entry.active += 1
        try:
            while (data := await asyncio.to_thread(next, chunks, None)) is not None:
                yield pb.TarChunk(data=data)
        finally:
            entry.active -= 1
            await asyncio.to_thread(chunks.close)

    @_unary
    async def Import(
        self, call: _Call, request_iterator: AsyncIterator[pb.ImportRequest], context: Any
    ) -> pb.ImportResponse:
        """Unpack a tar stream into the workspace."""
        messages, first = await _opening(request_iterator, "Import", "sandbox", "name the sandbox")
        entry = self._entry(call, first.sandbox.sandbox_id)
        # Spooled to disk first: tarfile wants a file, and a half-received stream
        # must not leave a half-written workspace behind.
        spool = entry.record.state_root / f"import-{secrets.token_hex(6)}.tar"
        entry.active += 1
        try:
            with open(spool, "wb") as handle:
                received = 0
                async for message in messages:
                    if message.WhichOneof("part") != "data":
                        raise InvalidRequest("Import sent a second sandbox reference; only data may follow the first")
                    data = message.data  # read once: each read of a bytes field copies it
                    _check_message_size(message, "Import message", len(data))
                    received += len(data)
                    if received > MAX_IMPORT_BYTES:
                        await _discard(messages, WRITE_DRAIN_BYTES)  # see WriteFile
                        raise LimitExceeded(
                            f"limit reached: max import size is {_bytes_text(MAX_IMPORT_BYTES)}, and this tar stream is larger"
                        )
                    await asyncio.to_thread(handle.write, data)
            files, total = await asyncio.to_thread(ws.Workspace(entry.record).import_tar, spool)
            return pb.ImportResponse(files=files, bytes=total)
        finally:
            entry.active -= 1
            with contextlib.suppress(OSError):
                spool.unlink()


class SandboxHost:
    """A running sandbox host: gRPC server, provider, and the sandboxes of every tenant."""

    def __init__(self, config: HostConfig, provider: Provider | None = None) -> None:
        """Prepare to serve ``config``; ``provider`` overrides the one the config names."""
        for name in ("max_sandboxes_per_tenant", "max_execs_per_sandbox", "max_write_bytes", "reap_interval_s"):
            if not getattr(config, name) > 0:
                raise HostStartError(f"{name.replace('_', ' ')} must be more than 0, not {getattr(config, name)!r}")
        self.config = config
        """How this host runs."""
        self.tokens = TokenTable(config.tokens)
        """Who may call, as which tenant."""
        self.state_dir = Path(config.state_dir).expanduser().resolve()
        """Where sandboxes live on disk."""
        self.host_id = ""
        """Stable id of this host's state dir, written on docker containers for reconciling."""
        self._provider = provider
        self.sandboxes: dict[str, _Entry] = {}
        self._direct_manifests: OrderedDict[tuple[str, str], ManifestState] = OrderedDict()
        """Hash caches of direct workspaces by (tenant, directory), kept across their sandboxes."""
        """Live sandboxes by id, every tenant's."""
        self.provisioning: dict[tuple[str, str, str], asyncio.Future[str]] = {}
        """Provisions in flight by (tenant, request_id, workspace_dir)."""
        self.workspace_roots = [Path(root).expanduser().resolve() for root in config.allow_workspace_roots]
        """Resolved directories a direct workspace may be under."""
        self._pending_provisions: dict[str, int] = {}
        self.address = ""
        """The bound address, once started."""
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._lock_fd: int | None = None
        self._socket_path: Path | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def provider(self) -> Provider:
        """The provider sandboxes are made with."""
        assert self._provider is not None, "start() first"
        return self._provider

    # ----- start and stop

    async def start(self) -> str:
        """Lock the state dir, start the provider and the server; return the bound address."""
        self._lock_state_dir()
        try:
            if self._provider is None:
                self._provider = await asyncio.to_thread(self._make_provider)
            reconcile = getattr(self._provider, "reconcile", None)
            if reconcile is not None:
                removed = await reconcile(self.host_id)
                if removed:
                    log.info("removed %d sandbox container(s) left by an earlier run", len(removed))
            self._server = grpc.aio.server(interceptors=[BearerTokenInterceptor(self.tokens)], options=SERVER_OPTIONS)
            pb_grpc.add_SandboxServicer_to_server(_SandboxService(self), self._server)
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
            reflection.enable_server_reflection(
                [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
            )
            self.address = self._bind(self._server)
            await self._server.start()
            await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
            await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            self._reaper = asyncio.ensure_future(self._reap_idle())
        except BaseException:
            await self._release()
            raise
        log.info(
            "sandbox host listening on %s (provider %s, state %s)", self.address, self.provider.name, self.state_dir
        )
        return self.address

    def _make_provider(self) -> Provider:
        """The provider the config names (docker is imported only when asked for)."""
        if self.config.provider == "local":
            from remote_sandbox.providers.local import LocalProvider

            return LocalProvider(allow_base=self.config.allow_base)
        if self.config.provider == "docker":
            from remote_sandbox.providers.docker import DockerProvider

            try:
                return DockerProvider(default_image=self.config.default_image, host_id=self.host_id)
            except Exception as exc:
                raise HostStartError(f"the docker provider could not start: {exc}") from None
        raise HostStartError(f"unknown provider {self.config.provider!r}: use 'local' or 'docker'")

    def _lock_state_dir(self) -> None:
        """Own the state dir alone, learn the host id, and clear sandboxes an earlier run left."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.state_dir / "host.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HostStartError(f"cannot use state dir {self.state_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise HostStartError(
                f"another sandbox host is using state dir {self.state_dir}; stop it or pass a different --state-dir"
            ) from None
        self._lock_fd = fd
        id_file = self.state_dir / "host-id"
        try:
            self.host_id = id_file.read_text().strip()
        except FileNotFoundError:
            self.host_id = ""
        if not self.host_id:
            self.host_id = "h-" + secrets.token_hex(8)
            id_file.write_text(self.host_id + "\n")
        leftovers = self.state_dir / "sandboxes"
        if leftovers.is_dir():
            for child in leftovers.iterdir():
                shutil.rmtree(child, ignore_errors=True)

    def _bind(self, server: grpc.aio.Server) -> str:
        """Add the listening port; return the address as bound (port 0 resolved)."""
        listen = self.config.listen
        for scheme in ("grpc://", "grpcs://"):
            if listen.startswith(scheme):
                listen = listen[len(scheme) :]
        credentials = None
        if self.config.tls_cert or self.config.tls_key:
            if not (self.config.tls_cert and self.config.tls_key):
                raise HostStartError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
            try:
                pair = (Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())
            except OSError as exc:
                raise HostStartError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
            credentials = grpc.ssl_server_credentials([pair])
        if listen.startswith("unix:"):
            path = listen[len("unix:") :].removeprefix("//")
            if not path.startswith("/"):
                raise HostStartError(
                    f"a unix socket address needs an absolute path: unix:///path, not {self.config.listen}"
                )
            listen = f"unix://{path}"
            _clear_stale_socket(Path(path))
            self._socket_path = Path(path)
        try:
            if credentials is not None:
                port = server.add_secure_port(listen, credentials)
            else:
                port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise HostStartError(f"cannot listen on {self.config.listen}: {exc} (is the address in use?)") from None
        if listen.startswith("unix:"):
            return listen
        host, _, _ = listen.rpartition(":")
        return f"{host}:{port}"

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, end running calls after ``grace`` seconds (killing their commands), clean up."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._reaper is not None:
            self._reaper.cancel()
        await server.stop(grace)
        if self._socket_path is not None:
            with contextlib.suppress(OSError):
                self._socket_path.unlink()
        await self._release()
        log.info("sandbox host stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once ``stop`` has finished."""
        await self._stopped.wait()

    async def _release(self) -> None:
        """Destroy or leave the sandboxes, close the provider, unlock the state dir."""
        for task in list(self.provisioning.values()):
            task.cancel()
        if self.config.destroy_on_exit:
            for entry in list(self.sandboxes.values()):
                with contextlib.suppress(Exception):
                    await self.destroy(entry)
        elif self.sandboxes:
            log.info("leaving %d sandbox(es) in %s", len(self.sandboxes), self.state_dir)
        if self._provider is not None:
            with contextlib.suppress(Exception):
                await self._provider.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ----- sandboxes

    def provision_done(self, key: tuple[str, str, str], task: asyncio.Future[str]) -> None:
        """Remember which sandbox a request id made; forget a failed attempt so it can be retried."""
        current = self.provisioning.get(key)
        if current is task and (task.cancelled() or task.exception() is not None):
            del self.provisioning[key]

    def check_workspace_dir(self, requested: str) -> Path | None:
        """The resolved directory a Provision asks to use as its workspace, None for a fresh one; refuse what is not allowed."""
        if not requested:
            return None
        if not self.workspace_roots:
            # Asked before anything about the path is looked at: a remote client learns nothing of this host's disk.
            raise PermissionDenied(
                "this sandbox host does not accept direct workspaces; start it with "
                "--allow-workspace-root DIR to allow directories under DIR"
            )
        if "\0" in requested or not requested.startswith("/"):
            raise InvalidRequest(f"workspace_dir {requested!r} must be an absolute path")
        resolved = Path(os.path.realpath(requested))
        if not any(resolved == root or root in resolved.parents for root in self.workspace_roots):
            allowed = ", ".join(str(root) for root in self.workspace_roots)
            raise PermissionDenied(
                f"workspace_dir {requested} is not under an allowed workspace root ({allowed}); "
                "the host operator can allow more with --allow-workspace-root DIR"
            )
        if not resolved.is_dir():
            raise InvalidRequest(f"workspace_dir {requested} is not an existing directory on the sandbox host")
        return resolved

    async def provision(
        self, tenant: str, recipe: pb.Recipe, key: tuple[str, str, str] | None, workspace_dir: Path | None = None
    ) -> str:
        """Make a sandbox for ``tenant`` (in ``workspace_dir`` if given, already checked); return its id."""
        # Sandboxes still being made count too: concurrent Provisions must not all pass.
        pending = self._pending_provisions.get(tenant, 0)
        owned = sum(1 for e in self.sandboxes.values() if e.record.tenant == tenant) + pending
        limit = self.config.max_sandboxes_per_tenant
        if owned >= limit:
            raise LimitExceeded(
                f"limit reached: max sandboxes per tenant is {limit}, and this tenant already has {owned}"
                f"{f' ({pending} being made)' if pending else ''}; destroy some first"
            )
        workdir = _check_workdir(recipe.workdir or DEFAULT_WORKDIR)
        self._pending_provisions[tenant] = pending + 1
        try:
            return await self._provision(tenant, recipe, key, workdir, workspace_dir)
        finally:
            self._pending_provisions[tenant] -= 1
            if not self._pending_provisions[tenant]:
                del self._pending_provisions[tenant]

    async def _provision(
        self, tenant: str, recipe: pb.Recipe, key: tuple[str, str, str] | None, workdir: str, workspace_dir: Path | None
    ) -> str:
        """Make the directories and the provider's sandbox; register it; return its id."""
        sandbox_id = "sb-" + secrets.token_hex(6)
        root = ws.sandbox_root(self.state_dir, sandbox_id)
        workspace = await asyncio.to_thread(ws.create_sandbox_dirs, root, workspace_dir is None)
        if workspace_dir is not None:
            workspace = workspace_dir
        now = _now_ms()
        record = SandboxRecord(
            sandbox_id=sandbox_id,
            tenant=tenant,
            recipe=recipe,
            workspace=workspace,
            workdir=workdir,
            isolation="",
            created_unix_ms=now,
            last_used_unix_ms=now,
            # Always the host's own directory, so destroying the sandbox never touches the user's.
            state=root,
            workspace_dir=str(workspace_dir or ""),
        )
        try:
            await self.provider.provision(record)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.provider.destroy(record)
            await asyncio.to_thread(shutil.rmtree, root, True)
            raise
        self.sandboxes[sandbox_id] = _Entry(record, key, manifests=self._manifest_state(tenant, workspace_dir))
        log.info("provisioned %s for %s (%s)", sandbox_id, tenant, record.isolation)
        return sandbox_id

    def _manifest_state(self, tenant: str, workspace_dir: Path | None) -> ManifestState:
        """A fresh hash cache, or the one a direct workspace's earlier sandboxes filled.

        Every ``tether -p`` in a project is a new session with a new sandbox of the same
        directory: keeping the cache spares re-hashing the whole project each time.
        """
        if workspace_dir is None:
            return ManifestState()
        key = (tenant, str(workspace_dir))
        state = self._direct_manifests.pop(key, None) or ManifestState()
        self._direct_manifests[key] = state
        while len(self._direct_manifests) > KEPT_DIRECT_CACHES:
            self._direct_manifests.popitem(last=False)
        return state

    async def destroy(self, entry: _Entry) -> None:
        """Destroy one sandbox: its processes or container, then its directory."""
        record = entry.record
        self.sandboxes.pop(record.sandbox_id, None)
        if entry.request_key is not None:
            self.provisioning.pop(entry.request_key, None)
        try:
            await self.provider.destroy(record)
        finally:
            await asyncio.to_thread(shutil.rmtree, record.state_root, True)

    async def _reap_idle(self) -> None:
        """Every ``reap_interval_s``, destroy sandboxes idle past their TTL."""
        while True:
            await asyncio.sleep(self.config.reap_interval_s)
            await self.reap_idle()

    async def reap_idle(self, now_ms: int | None = None) -> list[str]:
        """Destroy sandboxes idle past their recipe's TTL (0 = never) as of ``now_ms``; return their ids.

        A sandbox running a command or a transfer is never idle.
        """
        now = _now_ms() if now_ms is None else now_ms
        reaped = []
        for entry in list(self.sandboxes.values()):
            ttl_ms = entry.record.recipe.idle_ttl_seconds * 1000
            if ttl_ms and not entry.active and now - entry.record.last_used_unix_ms > ttl_ms:
                try:
                    await self.destroy(entry)
                    reaped.append(entry.record.sandbox_id)
                    # Logged once it is gone, directory included: tests and operators wait on this line.
                    log.info(
                        "destroyed idle sandbox %s: unused for more than %d s", entry.record.sandbox_id, ttl_ms // 1000
                    )
                except Exception:
                    log.exception("could not destroy idle sandbox %s", entry.record.sandbox_id)
        return reaped


def _clear_stale_socket(path: Path) -> None:
    """Remove a unix socket left by a host that died; refuse if a host listens there or it is no socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise HostStartError(f"cannot listen on unix://{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: a dead host's leftover
        return
    except OSError as exc:
        raise HostStartError(f"cannot listen on unix://{path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise HostStartError(f"cannot listen on unix://{path}: another server is listening there")


def _check_workdir(workdir: str) -> str:
    """The recipe's workdir, normalised, or InvalidRequest if it cannot hold a workspace."""
    if "\0" in workdir or not workdir.startswith("/"):
        raise InvalidRequest(f"recipe workdir {workdir!r} must be an absolute path")
    normal = posixpath.normpath(workdir)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if normal == "/" or any(normal == d or normal.startswith(d + "/") for d in _FORBIDDEN_WORKDIRS):
        raise InvalidRequest(f"recipe workdir {workdir!r} would hide or sit in a system directory; use e.g. /workspace")
    spill = "/tmp/tether-spill"
    if normal == spill or normal.startswith(spill + "/") or spill.startswith(normal + "/"):
        raise InvalidRequest(f"recipe workdir {workdir!r} overlaps the spill area {spill}")
    return normal
