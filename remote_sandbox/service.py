"""The ``tether.sandbox.v1.Sandbox`` servicer: each RPC finds the caller's sandbox and hands the work on.

The tenant comes from the interceptor (``auth.caller_tenant``): calls are
authenticated once. Sandboxes live in the ``SandboxRegistry``, commands run in
the provider, bytes move in ``transfers``. Every RPC writes one log line to the
``remote_sandbox.rpc`` logger and ends in a status code from ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox import transfers
from remote_sandbox import workspace as ws
from remote_sandbox.auth import caller_tenant
from remote_sandbox.config import DEFAULT_EXEC_TIMEOUT_S, DEFAULT_OUTPUT_CAP, HostConfig
from remote_sandbox.providers.base import ExecSpec, InvalidRequest, Provider
from remote_sandbox.registry import SandboxEntry, SandboxRegistry
from remote_sandbox.status import status_of

log = logging.getLogger("remote_sandbox.server")  # the host's one logger of its own events, as operators know it
rpc_log = logging.getLogger("remote_sandbox.rpc")

T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Sandbox"].full_name
"""``tether.sandbox.v1.Sandbox``."""


_INFO_FROM_RECORD = (
    *("sandbox_id", "recipe", "workdir", "isolation", "os"),
    *("created_unix_ms", "last_used_unix_ms", "warnings", "workspace_dir"),
)
"""The fields of ``SandboxInfo`` that are the ``SandboxRecord``'s own, under the same names."""


class _Call:
    """One RPC being served: an async context that writes its log line and ends it with a status code."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Serve a call to ``method``; ``context`` is where it is aborted."""
        self.method = method
        """The RPC's name."""
        self.tenant = "-"
        """The caller, once admitted."""
        self.sandbox = "-"
        """The sandbox the call is about, once known."""
        self.status = "OK"
        """How the call ended, for the log line."""
        self._context = context
        self._started = time.monotonic()

    def admit(self, request: Any) -> None:
        """Take the tenant the interceptor let in; refuse a request past the max message size."""
        self.tenant = caller_tenant()
        self.sandbox = getattr(request, "sandbox_id", "") or "-"
        # Streamed-in requests (an async iterator, no ByteSize) check each message instead.
        if hasattr(request, "ByteSize"):
            transfers.check_message_size(request, f"{self.method} request")

    async def __aenter__(self) -> _Call:
        """This call, timed since it was made."""
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Abort with the status code of ``exc`` if it is an error (ours or unknown); log the call's one line."""
        try:
            if isinstance(exc, asyncio.CancelledError):
                self.status = "CANCELLED"
            elif isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
                code, message = status_of(exc)
                self.status = code.name
                if code == grpc.StatusCode.INTERNAL:
                    log.error("%s failed", self.method, exc_info=exc)
                await self._context.abort(code, message)
        finally:
            duration_ms = (time.monotonic() - self._started) * 1000
            rpc_log.info(
                "rpc method=%s tenant=%s sandbox=%s status=%s duration_ms=%.1f",
                *(self.method, self.tenant, self.sandbox, self.status, duration_ms),
            )


def _unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a handler: admit the caller, log one line, turn errors into status codes."""

    @functools.wraps(method)
    async def handler(self: SandboxService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _Call(method.__name__, context) as call:
            call.admit(request)
            return await method(self, call, request, context)

    return handler


def _streaming(method: Callable[..., AsyncGenerator[Any, None]]) -> Callable[..., AsyncIterator[Any]]:
    """Like ``_unary``, for handlers that stream their responses."""

    @functools.wraps(method)
    async def handler(self: SandboxService, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _Call(method.__name__, context) as call:
            call.admit(request)
            # Closed here, not left to the garbage collector, when this generator is: what the
            # handler holds (a file, a busy mark) is released before the call's log line.
            async with contextlib.aclosing(method(self, call, request, context)) as responses:
                async for response in responses:
                    yield response

    return handler


def _ends(event: pb.ExecEvent) -> bool:
    """Whether ``event`` carries the command's Exited (itself, or last of the events it brings along)."""
    return (event.following[-1] if event.following else event).HasField("exited")


async def _settled(sending: asyncio.Future[None]) -> None:
    """Wait until ``sending`` is done; if it failed, so did the call, which its next write or status reports."""
    with contextlib.suppress(Exception):
        await sending


class SandboxService(pb_grpc.SandboxServicer):
    """The Sandbox service: tenants' sandboxes, commands and files."""

    def __init__(self, registry: SandboxRegistry, provider: Provider, config: HostConfig) -> None:
        """Serve the sandboxes of ``registry``, made and run by ``provider``, within ``config``'s limits."""
        self.registry = registry
        """Every tenant's sandboxes."""
        self.provider = provider
        """What runs commands."""
        self.config = config
        """The host's limits."""

    def _entry(self, call: _Call, sandbox_id: str) -> SandboxEntry:
        """The caller's sandbox ``sandbox_id``, named in the call's log line."""
        call.sandbox = sandbox_id or "-"
        return self.registry.get(call.tenant, sandbox_id)

    async def _upload(
        self,
        call: _Call,
        request_iterator: AsyncIterator[Any],
        opening: tuple[str, str],
        transfer: Callable[[SandboxEntry, Any, AsyncIterator[Any]], Awaitable[T]],
    ) -> T:
        """Serve a client-streaming call: its first message carries ``opening`` = (part, what it must do) and names
        the sandbox; ``transfer(entry, part, rest of the messages)`` runs with that sandbox busy."""
        part, duty = opening
        messages, first = await transfers.first_message(request_iterator, call.method, part, duty)
        named = getattr(first, part)
        entry = self._entry(call, named.sandbox_id)
        with self.registry.busy(entry):
            return await transfer(entry, named, messages)

    async def _info(self, entry: SandboxEntry) -> pb.SandboxInfo:
        """What a client is told about ``entry``."""
        running = await self.provider.is_running(entry.record)
        return pb.SandboxInfo(
            state=pb.SandboxInfo.RUNNING if running else pb.SandboxInfo.STOPPED,
            provider=self.provider.name,
            **{name: getattr(entry.record, name) for name in _INFO_FROM_RECORD},
        )

    # ----- lifecycle

    @_unary
    async def Provision(self, call: _Call, request: pb.ProvisionRequest, context: Any) -> pb.SandboxInfo:
        """Create a sandbox from the recipe; the same request_id returns the same sandbox."""
        entry = await self.registry.provision(call.tenant, request.recipe, request.request_id, request.workspace_dir)
        call.sandbox = entry.record.sandbox_id
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
        return pb.ListSandboxesResponse(sandboxes=[await self._info(e) for e in self.registry.of_tenant(call.tenant)])

    @_unary
    async def Destroy(self, call: _Call, request: pb.SandboxRef, context: Any) -> pb.DestroyResponse:
        """Destroy a sandbox and everything in it."""
        await self.registry.destroy(self._entry(call, request.sandbox_id))
        return pb.DestroyResponse()

    @_unary
    async def Touch(self, call: _Call, request: pb.SandboxRef, context: Any) -> pb.SandboxInfo:
        """Mark a sandbox used now, which restarts its idle TTL."""
        return await self._info(self._entry(call, request.sandbox_id))

    # ----- commands

    @_streaming
    async def Exec(self, call: _Call, request: pb.ExecRequest, context: Any) -> AsyncGenerator[pb.ExecEvent, None]:
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
            batch_events=request.batch_events,
        )
        with contextlib.ExitStack() as running:
            running.enter_context(self.registry.running_command(entry))
            # The headers go out now, before the command starts, not with its first event: a client
            # asks for a message only once the headers came, so with the event it would wake twice.
            # One turn of the loop lets them leave (and the client take them) before the launcher
            # spawns, rather than beside it: 0.1-0.2 ms less per Exec on a busy 2-core machine.
            headers: asyncio.Future[None] | None = asyncio.ensure_future(context.send_initial_metadata(()))
            try:
                await asyncio.sleep(0)
                async for event in self.provider.exec(entry.record, spec):
                    if headers is not None:
                        await _settled(headers)
                        headers = None
                    if _ends(event):
                        # The command is over: its sandbox is idle again before the client hears so.
                        running.close()
                    yield event
            finally:
                if headers is not None:
                    # A status must not go out while the headers are on their way: it would carry them again.
                    await _settled(headers)

    # ----- files

    @_streaming
    def ReadFile(self, call: _Call, request: pb.ReadFileRequest, context: Any) -> AsyncGenerator[bytes, None]:
        """Stream a file's bytes in ``READ_CHUNK`` chunks (encoded ``FileChunk``s); the first carries the file size."""
        entry = self._entry(call, request.sandbox_id)
        return self.registry.while_busy(entry, transfers.read_file(entry.workspace, request))

    @_unary
    async def WriteFile(self, call: _Call, requests: AsyncIterator[pb.WriteFileRequest], context: Any) -> pb.FileInfo:
        """Write a file atomically from a header and data messages."""

        def write(entry: SandboxEntry, header: pb.WriteFileHeader, data: AsyncIterator[Any]) -> Awaitable[pb.FileInfo]:
            return transfers.write_file(entry.workspace, header, data, self.config.max_write_bytes, context.cancelled)

        return await self._upload(call, requests, ("header", "be the header (path, mode)"), write)

    @_unary
    async def Stat(self, call: _Call, request: pb.PathRequest, context: Any) -> pb.FileInfo:
        """Describe one path; ``exists`` is false when nothing is there."""
        entry = self._entry(call, request.sandbox_id)
        return await asyncio.to_thread(entry.workspace.stat, request.path)

    @_unary
    async def ListDir(self, call: _Call, request: pb.PathRequest, context: Any) -> pb.ListDirResponse:
        """List a directory."""
        entry = self._entry(call, request.sandbox_id)
        return pb.ListDirResponse(entries=await asyncio.to_thread(entry.workspace.list_dir, request.path))

    # ----- workspace snapshots

    @_unary
    async def Manifest(self, call: _Call, request: pb.ManifestRequest, context: Any) -> pb.ManifestResponse:
        """Path, size, mode and sha256 of every file and symlink under the paths, in full or since a token."""
        entry = self._entry(call, request.sandbox_id)
        with self.registry.busy(entry):
            return await asyncio.to_thread(entry.workspace.manifest, request, entry.manifests)

    @_unary
    async def Import(self, call: _Call, requests: AsyncIterator[pb.ImportRequest], context: Any) -> pb.ImportResponse:
        """Unpack a tar stream into the workspace."""

        def unpack(entry: SandboxEntry, _: pb.SandboxRef, data: AsyncIterator[Any]) -> Awaitable[pb.ImportResponse]:
            return transfers.import_tar(entry.workspace, entry.record.state_root, data)

        return await self._upload(call, requests, ("sandbox", "name the sandbox"), unpack)

    @_streaming
    def Export(self, call: _Call, request: pb.ExportRequest, context: Any) -> AsyncGenerator[pb.TarChunk, None]:
        """A tar stream of the paths."""
        entry = self._entry(call, request.sandbox_id)
        return self.registry.while_busy(entry, transfers.export_tar(entry.workspace, request))
