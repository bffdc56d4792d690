"""The harness's only way to a sandbox host: a gRPC client with typed errors.

Every ``grpc.aio.AioRpcError`` becomes one ``SandboxError`` subclass here, at
the boundary where the status code is understood, carrying the host's own
words. Cancelling a task that awaits ``exec`` (or closing an ``exec_stream``
early) cancels the RPC, and the host kills the command's process group.
"""

from __future__ import annotations

import asyncio
import builtins
import ctypes
import functools
import random
import ssl
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.file_data import Buffer, file_chunk_data, write_data
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

T = TypeVar("T")

MAX_MESSAGE_BYTES = 16 << 20
"""Largest gRPC message either way (the host allows the same)."""

WRITE_CHUNK = 1 << 20
"""Bytes of file data per WriteFile (and Import) message. Measured here, alternating sizes in one
run on a loaded machine, with data messages encoded by hand (protos.file_data): 1 MiB went up in
4.2 ms (p50) in 1 MiB messages, 4.4 ms in 512 KiB and 4.5 ms in 256 KiB ones; 100 MB in 113 ms
in 1 MiB messages, 175 ms in 4 MiB and 200-250 ms in 256 KiB ones. (Through protobuf, which
copied each message twice more, 256 KiB had been best.)"""

_READ_FILE_METHOD = "/tether.sandbox.v1.Sandbox/ReadFile"
"""ReadFile's path, called with the chunks' data decoded as views (``protos.file_data``)."""

_WRITE_FILE_METHOD = "/tether.sandbox.v1.Sandbox/WriteFile"
"""WriteFile's path, called with messages the client encodes itself (``protos.file_data``)."""

CALL_TIMEOUT_S = 15.0
"""Deadline of quick calls (lifecycle, Stat, ListDir)."""

PROVISION_TIMEOUT_S = 15 * 60.0
"""Deadline of Provision: an image's setup commands may take minutes."""

MANIFEST_TIMEOUT_S = 10 * 60.0
"""Deadline of Manifest: the host hashes the whole workspace before it answers."""

TRANSFER_STALL_S = 30.0
"""File and tar transfers are bounded by progress, not total time: this long without a chunk fails them."""

EXEC_DEFAULT_TIMEOUT_S = 120.0
"""The host's own limit when a command gives none (see remote_sandbox.config)."""

EXEC_DEADLINE_MARGIN_S = 30.0
"""Exec's RPC deadline is the command's timeout plus this: the host's timeout fires first."""

KEEPALIVE_TIME_S = 5.0
"""Seconds between two keepalive pings on a connection (also mid-call, through a long quiet command)."""

KEEPALIVE_TIMEOUT_S = 4.0
"""A ping unanswered this long closes the connection, failing its calls as UNAVAILABLE."""

KEEPALIVE_DETECT_S = KEEPALIVE_TIME_S + KEEPALIVE_TIMEOUT_S
"""The longest a silent host goes unnoticed: one ping interval plus its timeout."""

RETRY_ATTEMPTS = 3
"""Tries of an idempotent call that failed with a transport blip (the first one included)."""

RETRY_BACKOFF_S = 0.2
"""The first pause between two tries; it doubles, with jitter, each time."""

BLIP_S = 2.0
"""A call that failed UNAVAILABLE faster than this met a blip (a reset, a refused connection) worth
retrying; one that waited longer met a silent host, and trying again would only wait again."""

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A silent host (a blackholed network, a frozen machine) is found by pings, also in the
    # middle of a long command that prints nothing; the host permits pings this often.
    ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME_S * 1000)),
    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
    # Newer cores time an unanswered ping by this one (a minute by default), not by the keepalive timeout.
    ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC stops pinging after two pings without data by default: a quiet Exec would go unwatched.
    ("grpc.http2.max_pings_without_data", 0),
    # ...and, in older cores, waits 5 minutes between two pings without data in between.
    ("grpc.http2.min_time_between_pings_ms", int(KEEPALIVE_TIME_S * 1000)),
    # Fail fast and retry at this level: a dead host must not hang a tool call.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # Never idle a channel on purpose: a connection that is not READY then means the host went away.
    ("grpc.client_idle_timeout_ms", 2**31 - 1),
]
"""Channel options, set explicitly."""


class SandboxError(Exception):
    """Something went wrong with the sandbox; ``str()`` is a sentence a user can read."""


class SandboxAuthError(SandboxError):
    """The host refused our credentials (UNAUTHENTICATED)."""


class SandboxGone(SandboxError):
    """The sandbox does not exist any more (NOT_FOUND)."""


class SandboxNotRunning(SandboxError):
    """The sandbox exists but is not running, or its setup failed (FAILED_PRECONDITION)."""


class SandboxInvalidRequest(SandboxError):
    """The host refused the request itself: a path outside the workspace, a bad recipe (INVALID_ARGUMENT)."""


class SandboxLimitExceeded(SandboxError):
    """A limit of the host or sandbox was hit; the message says which (RESOURCE_EXHAUSTED)."""


class SandboxPermissionDenied(SandboxError):
    """The host does not allow what was asked (a direct workspace it was not started to allow)."""


class HostUnreachable(SandboxError):
    """The host could not be reached or did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED)."""

    def __init__(self, message: str, *, sent: bool = True, silent: bool = False) -> None:
        """``sent``: the request may have reached the host; ``silent``: the host went quiet (not refused)."""
        super().__init__(message)
        self.sent = sent
        """False when the call never left this machine (no connection): it surely did not run."""
        self.silent = silent
        """True when the host stopped answering (keepalive, deadline) rather than refusing or resetting."""


class NoHostAnswers(HostUnreachable):
    """Every host the session may use was tried, and none answered: the call never reached one."""

    def __init__(self, message: str) -> None:
        """``message`` names each host and why it did not answer."""
        super().__init__(message, sent=False)


@dataclass
class ExecResult:
    """How a command ended, with all the output the stream carried."""

    exit_code: int
    """The exit code; -1 when killed by a signal."""
    signal: int
    """The killing signal, or 0."""
    timed_out: bool
    """Whether the timeout killed it (and its whole process group)."""
    truncated: bool
    """Whether output passed the cap; ``spill_path`` then holds all of it."""
    spill_path: str
    """Sandbox path of the full output when truncated, else empty."""
    stdout: bytes
    """Standard output as streamed (the head only, when truncated)."""
    stderr: bytes
    """Standard error as streamed (the head only, when truncated)."""
    cwd: str
    """The shell's final directory, with ``report_cwd`` (empty if unknown)."""
    duration_ms: int
    """Wall-clock time of the command."""


def parse_target(target: str) -> tuple[str, bool]:
    """The gRPC channel target and whether it uses TLS, from ``grpc://``, ``grpcs://``, ``unix://`` or ``host:port``."""
    for scheme, tls in (("grpcs://", True), ("grpc://", False)):
        if target.startswith(scheme):
            address = target[len(scheme) :].rstrip("/")
            if not address or address.startswith(":"):
                raise SandboxError(
                    f"{target!r} is not a sandbox host address: it names no host (use {scheme}HOST:PORT)"
                )
            return address, tls
    if target.startswith("unix:"):
        path = target[len("unix:") :].removeprefix("//")
        if not path.startswith("/"):
            raise SandboxError(
                f"{target!r} is not a sandbox host address: a unix socket needs an absolute path (unix:///path)"
            )
        return f"unix://{path}", False
    if "://" in target or ":" not in target:
        raise SandboxError(
            f"{target!r} is not a sandbox host address; use grpc://HOST:PORT, grpcs://HOST:PORT or unix:///PATH"
        )
    return target, False


_CONNECT_FAILURE_PREFIXES = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed")
"""How gRPC core begins the details of a call that never reached a host."""

TLS_PROBE_TIMEOUT_S = 2.0
"""How long the probe for a TLS host behind a grpc:// address may take."""


def connect_failure(target: str, details: str, *, ca_file: str | None = None) -> str:
    """One plain sentence for gRPC core's "failed to connect to all addresses; last error: ..." details."""
    last = details.rpartition("last error: ")[2] or details
    if "CERTIFICATE_VERIFY_FAILED" in last:
        reason = last.rpartition("CERTIFICATE_VERIFY_FAILED:")[2].removesuffix(": OK").strip()
        cause = (
            f"the host's certificate is not signed by the CA in {ca_file}"
            if ca_file
            else "the host's certificate is not signed by a CA this machine trusts: pass the CA that signed it with --sandbox-ca"
        )
        return f"TLS with the sandbox host at {target} failed: {cause} ({reason or 'certificate verify failed'})"
    if "WRONG_VERSION_NUMBER" in last:
        plain = target.replace("grpcs://", "grpc://", 1)
        return f"TLS with the sandbox host at {target} failed: the host does not speak TLS (try {plain})"
    if "Peer name" in last and "not in peer certificate" in last:
        return f"TLS with the sandbox host at {target} failed: its certificate is not made out for this host name ({last.strip()})"
    if "Tls handshake failed" in last or "security handshaker" in last:
        return f"TLS with the sandbox host at {target} failed: {last.split(': ', 1)[-1].strip()}"
    if "Connection refused" in last:
        return f"the sandbox host at {target} refused the connection (is it running?)"
    if "No such file or directory" in last and target.startswith("unix:"):
        return f"no sandbox host listens at {target} (the socket does not exist; is the host running?)"
    if (
        "Domain name not found" in last
        or "lookup" in last
        and "failed" in last
        or details.startswith("DNS resolution failed")
    ):
        return f"the sandbox host name in {target} could not be resolved"
    if "timed out" in last.lower() or "Timeout" in last:
        return f"the sandbox host at {target} did not answer the connection (timed out)"
    return f"the sandbox host at {target} could not be reached ({last.strip()})"


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether ``host:port`` completes a TLS handshake (its certificate unchecked: this only asks which protocol)."""
    if not port:
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), TLS_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, ssl.SSLError):
        pass  # closing a TLS connection the host reset is not our problem
    return True


def _check_pem_certificates(path: str, data: bytes) -> None:
    """Raise SandboxError unless ``data`` holds at least one PEM certificate that parses."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        reason = (
            "it is binary, not PEM text"
            if isinstance(exc, UnicodeDecodeError)
            else "no PEM certificate (-----BEGIN CERTIFICATE-----) in it could be read"
        )
        raise SandboxError(f"the CA file {path} is not usable: {reason}") from None


class SandboxClient:
    """Calls one sandbox host; safe to share between concurrent tasks of one event loop."""

    def __init__(self, target: str, token: str | None = None, *, ca_file: str | None = None) -> None:
        """Prepare to call ``target`` (grpc://h:p, grpcs://h:p or unix:///path) with bearer ``token``."""
        keep_freed_memory()
        self.target = target
        """The host's address as given."""
        self._channel_target, self._tls = parse_target(target)
        if ca_file and not self._tls:
            # Silently ignoring it would send the token in the clear to a host the user meant to verify.
            raise SandboxError(
                f"--sandbox-ca is for a TLS host, but {target} is not one: use grpcs://{self._channel_target.removeprefix('unix://')}"
            )
        self._token = token
        self._ca_file = ca_file
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.SandboxStub | None = None
        self._file_calls_on: grpc.aio.Channel | None = None
        self._file_call_pair: tuple[Any, Any] = (None, None)

    # ----- connection

    @property
    def stub(self) -> pb_grpc.SandboxStub:
        """The service stub, opening the channel on first use (inside the running loop)."""
        if self._stub is None:
            if self._tls:
                root = None
                if self._ca_file:
                    try:
                        with open(self._ca_file, "rb") as handle:
                            root = handle.read()
                    except OSError as exc:
                        raise SandboxError(f"cannot read the CA file {self._ca_file}: {exc.strerror}") from None
                    _check_pem_certificates(self._ca_file, root)
                credentials = grpc.ssl_channel_credentials(root_certificates=root)
                self._channel = grpc.aio.secure_channel(self._channel_target, credentials, options=CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(self._channel_target, options=CHANNEL_OPTIONS)
            self._stub = pb_grpc.SandboxStub(self._channel)
        return self._stub

    def connected(self) -> bool:
        """Whether the channel holds a working connection now (False after the host closed or reset it)."""
        return self._channel is not None and self._channel.get_state() == grpc.ChannelConnectivity.READY

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    async def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> SandboxClient:
        """Use as ``async with SandboxClient(...) as client``."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the channel."""
        await self.close()

    def _error(self, exc: grpc.aio.AioRpcError, what: str) -> SandboxError:
        """The typed error for a failed call; ``what`` names the operation for the message."""
        code = exc.code()
        details = (exc.details() or "").strip() or code.name.lower().replace("_", " ")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return SandboxAuthError(
                f"authentication with the sandbox host at {self.target} failed ({details}); "
                "check the sandbox token (--sandbox-token or TETHER_SANDBOX_TOKEN)"
            )
        if code == grpc.StatusCode.NOT_FOUND:
            return SandboxGone(details)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return SandboxNotRunning(details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return SandboxInvalidRequest(details)
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return SandboxPermissionDenied(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return SandboxLimitExceeded(details)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return HostUnreachable(f"the sandbox host at {self.target} did not finish {what} in time", silent=True)
        if code == grpc.StatusCode.UNAVAILABLE and details.startswith(_CONNECT_FAILURE_PREFIXES):
            return HostUnreachable(
                connect_failure(self.target, details, ca_file=self._ca_file),
                sent=False,
                silent="timed out" in details.lower() or "timeout" in details.lower(),
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            quiet = any(word in details.lower() for word in ("keepalive", "ping", "timeout", "timed out"))
            return HostUnreachable(
                f"the sandbox host at {self.target} stopped answering during {what} ({details})", silent=quiet
            )
        return SandboxError(f"the sandbox host at {self.target} failed {what}: {code.name}: {details}")

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the host answers and accepts our token; HostUnreachable or SandboxAuthError otherwise.

        A connection the host refuses, or a TLS handshake that fails, ends the wait at once
        with what went wrong: waiting longer would not change the answer.
        """
        channel = self._channel_or_open()
        health = health_pb2_grpc.HealthStub(channel)
        deadline = asyncio.get_running_loop().time() + timeout
        # Watch the first connection attempt: its failure names the cause (refused, TLS, DNS),
        # where a health check waiting for readiness would only time out.
        state = channel.get_state(try_to_connect=True)
        while state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
            except TimeoutError:
                break
            state = channel.get_state(try_to_connect=True)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.1)
        try:
            response = await health.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=remaining,
                wait_for_ready=state != grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise HostUnreachable(
                    f"the sandbox host at {self.target} did not answer within {timeout:g} s"
                ) from None
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise HostUnreachable(await self._connect_failure(exc.details() or "")) from None
            raise self._error(exc, "the health check") from None
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise HostUnreachable(f"the sandbox host at {self.target} is not serving (it may be shutting down)")
        # Health needs no token; a cheap authenticated call proves ours now, not at the first tool call.
        try:
            await self.stub.ListSandboxes(pb.ListSandboxesRequest(), metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "the token check") from None

    async def _connect_failure(self, details: str) -> str:
        """Why connecting failed, in words; a plain connection the host closed is probed for TLS."""
        if not self._tls and "Socket closed" in details and not self._channel_target.startswith("unix://"):
            host, _, port = self._channel_target.rpartition(":")
            if await _speaks_tls(host.strip("[]"), int(port) if port.isdigit() else 0):
                return (
                    f"the sandbox host at {self.target} speaks TLS and this connection did not: "
                    f"use grpcs://{self._channel_target} (with --sandbox-ca if its certificate is self-signed)"
                )
        return connect_failure(self.target, details, ca_file=self._ca_file)

    def _channel_or_open(self) -> grpc.aio.Channel:
        self.stub  # noqa: B018 - opens the channel
        assert self._channel is not None
        return self._channel

    def _file_calls(self) -> tuple[Any, Any]:
        """ReadFile and WriteFile on the stub's channel, coding file data without protobuf's copies."""
        channel = self._channel_or_open()
        if self._file_calls_on is not channel:
            self._file_calls_on = channel
            self._file_call_pair = (
                channel.unary_stream(
                    _READ_FILE_METHOD,
                    request_serializer=pb.ReadFileRequest.SerializeToString,
                    response_deserializer=file_chunk_data,
                ),
                # Messages go as they are: write_file encodes them.
                channel.stream_unary(_WRITE_FILE_METHOD, response_deserializer=pb.FileInfo.FromString),
            )
        return self._file_call_pair

    # ----- bounded calls

    async def _unary(self, what: str, call: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Await ``call()``, trying an idempotent one again after a transport blip, with backoff and jitter."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = loop.time()
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                attempt += 1
                if not (retry and attempt < RETRY_ATTEMPTS and _is_blip(exc, loop.time() - started)):
                    raise self._error(exc, what) from None
            await asyncio.sleep(retry_pause(attempt))

    def _stalled(self, what: str) -> HostUnreachable:
        return HostUnreachable(
            f"the sandbox host at {self.target} made no progress for {TRANSFER_STALL_S:g} s during {what}",
            silent=True,
        )

    async def _read_stream(self, what: str, start: Callable[[], Any]) -> AsyncIterator[Any]:
        """The messages of a server-streaming call, bounded by progress; tried again after a blip before any came."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            call = start()
            watch = _StallWatch(call)
            received = False
            started = loop.time()
            try:
                async for message in call:
                    received = True
                    watch.progress()
                    yield message
                return
            except grpc.aio.AioRpcError as exc:
                attempt += 1
                if received or not (attempt < RETRY_ATTEMPTS and _is_blip(exc, loop.time() - started)):
                    raise self._error(exc, what) from None
            except asyncio.CancelledError:
                if watch.stalled:
                    raise self._stalled(what) from None
                raise
            finally:
                watch.stop()
                call.cancel()
            await asyncio.sleep(retry_pause(attempt))

    async def _send_stream(self, what: str, start: Callable[[AsyncIterator[Any]], Any], messages: Any) -> Any:
        """A client-streaming call fed from ``messages`` (an async iterable), bounded by progress."""
        holder: list[_StallWatch] = []

        async def watched() -> AsyncIterator[Any]:
            async for message in messages:
                if holder:
                    holder[0].progress()
                yield message

        call = start(watched())
        watch = _StallWatch(call)
        holder.append(watch)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, what) from None
        except asyncio.CancelledError:
            if watch.stalled:
                raise self._stalled(what) from None
            raise
        finally:
            watch.stop()

    # ----- lifecycle

    async def provision(
        self, recipe: pb.Recipe, request_id: str | None = None, workspace_dir: str = ""
    ) -> pb.SandboxInfo:
        """Create a sandbox from ``recipe``; retrying with the same ``request_id`` returns the same one.

        ``workspace_dir`` names a directory on the host to use as the workspace itself
        (a direct workspace); only a host started with an allowed root under it accepts it.
        """
        request = pb.ProvisionRequest(recipe=recipe, request_id=request_id or "", workspace_dir=workspace_dir)
        return await self._unary(
            "provisioning a sandbox",
            lambda: self.stub.Provision(request, metadata=self._metadata, timeout=PROVISION_TIMEOUT_S),
            retry=bool(request_id),  # idempotent only on a request id
        )

    async def get(self, sandbox_id: str) -> pb.SandboxInfo:
        """Describe a sandbox."""
        ref = pb.SandboxRef(sandbox_id=sandbox_id)
        return await self._unary(
            "describing the sandbox",
            lambda: self.stub.GetSandbox(ref, metadata=self._metadata, timeout=CALL_TIMEOUT_S),
        )

    async def list(self) -> builtins.list[pb.SandboxInfo]:
        """Our sandboxes on this host."""
        response = await self._unary(
            "listing sandboxes",
            lambda: self.stub.ListSandboxes(pb.ListSandboxesRequest(), metadata=self._metadata, timeout=CALL_TIMEOUT_S),
        )
        return list(response.sandboxes)

    async def destroy(self, sandbox_id: str) -> None:
        """Destroy a sandbox and everything in it."""
        ref = pb.SandboxRef(sandbox_id=sandbox_id)
        await self._unary(
            "destroying the sandbox",
            lambda: self.stub.Destroy(ref, metadata=self._metadata, timeout=CALL_TIMEOUT_S),
        )

    async def touch(self, sandbox_id: str) -> pb.SandboxInfo:
        """Mark a sandbox as used now (restarts its idle TTL)."""
        ref = pb.SandboxRef(sandbox_id=sandbox_id)
        return await self._unary(
            "touching the sandbox",
            lambda: self.stub.Touch(ref, metadata=self._metadata, timeout=CALL_TIMEOUT_S),
        )

    # ----- commands

    async def exec_stream(
        self,
        sandbox_id: str,
        *,
        shell: str | None = None,
        argv: builtins.list[str] | None = None,
        cwd: str = "",
        env: dict[str, str] | None = None,
        stdin: bytes = b"",
        timeout_ms: int = 0,
        output_cap: int = 0,
        report_cwd: bool = False,
    ) -> AsyncGenerator[pb.ExecEvent, None]:
        """Run a command; yield Started, Output..., Exited. Stopping early cancels the command.

        Only a call that never left this machine (no connection to the host) is tried
        again: a command that may have started is never run twice.
        """
        if (shell is None) == (argv is None):
            raise SandboxInvalidRequest("a command needs exactly one of shell or argv")
        request = pb.ExecRequest(
            sandbox_id=sandbox_id,
            cwd=cwd,
            env=env or {},
            stdin=stdin,
            timeout_ms=timeout_ms,
            output_cap_bytes=output_cap,
            report_cwd=report_cwd,
            # A short command's events then come in one message (ExecEvent.following), not one each.
            batch_events=True,
        )
        if shell is not None:
            request.shell = shell
        else:
            request.argv.args.extend(argv or [])
        limit = timeout_ms / 1000 if timeout_ms else EXEC_DEFAULT_TIMEOUT_S
        attempt = 0
        while True:
            call = self.stub.Exec(request, metadata=self._metadata, timeout=limit + EXEC_DEADLINE_MARGIN_S)
            received = ended = False
            try:
                while (event := await call.read()) is not grpc.aio.EOF:
                    assert isinstance(event, pb.ExecEvent)
                    received = True
                    yield event
                    for following in event.following:
                        yield following
                    if (event.following[-1] if event.following else event).HasField("exited"):
                        # Exited is the last event, sent once the command is done with: the call's
                        # status adds nothing, and waiting for it (or cancelling the call) costs
                        # both ends a round of their loops. The call ends on its own.
                        ended = True
                        return
                return
            except grpc.aio.AioRpcError as exc:
                error = self._error(exc, "running the command")
                attempt += 1
                unsent = isinstance(error, HostUnreachable) and not error.sent
                if received or not unsent or attempt >= RETRY_ATTEMPTS:
                    raise error from None
            finally:
                if not ended:
                    # Closing the stream early (or a cancelled task) must stop the command on the host.
                    call.cancel()
            await asyncio.sleep(retry_pause(attempt))

    async def exec(
        self,
        sandbox_id: str,
        *,
        on_output: Callable[[int, bytes], None] | None = None,
        **command: Any,
    ) -> ExecResult:
        """Run a command to the end and collect its output; ``on_output(stream, data)`` sees it live.

        ``command`` takes the keywords of ``exec_stream`` (shell or argv, cwd, env, stdin,
        timeout_ms, output_cap, report_cwd). ``stream`` is ``pb.Output.STDOUT`` or
        ``pb.Output.STDERR``. Cancelling the awaiting task cancels the RPC, and the host
        kills the command's group.
        """
        stdout, stderr = bytearray(), bytearray()
        exited: pb.Exited | None = None
        stream = self.exec_stream(sandbox_id, **command)
        try:
            async for event in stream:
                which = event.WhichOneof("event")
                if which == "output":
                    (stdout if event.output.stream == pb.Output.STDOUT else stderr).extend(event.output.data)
                    if on_output is not None:
                        on_output(event.output.stream, event.output.data)
                elif which == "exited":
                    exited = event.exited
        finally:
            await stream.aclose()
        if exited is None:
            raise SandboxError(f"the sandbox host at {self.target} ended the command without saying how it exited")
        return ExecResult(
            exit_code=exited.exit_code,
            signal=exited.signal,
            timed_out=exited.timed_out,
            truncated=exited.truncated,
            spill_path=exited.spill_path,
            stdout=bytes(stdout),
            stderr=bytes(stderr),
            cwd=exited.cwd,
            duration_ms=exited.duration_ms,
        )

    # ----- files

    async def read_file(self, sandbox_id: str, path: str, offset: int = 0, length: int = 0) -> bytes:
        """The bytes of a file (``length`` 0 = to the end)."""
        request = pb.ReadFileRequest(sandbox_id=sandbox_id, path=path, offset=offset, length=length)
        # The chunks' data come as views of the received messages, joined once at the end:
        # growing a buffer and copying it out touches every byte twice more, which cost
        # about a fifth of a 100 MB read here.
        parts: builtins.list[Buffer] = []
        stream = self._read_stream(f"reading {path}", lambda: self._file_calls()[0](request, metadata=self._metadata))
        async for data in stream:
            parts.append(data)
        return b"".join(parts)

    async def write_file(
        self, sandbox_id: str, path: str, data: bytes, mode: int = 0o644, create_parents: bool = True
    ) -> pb.FileInfo:
        """Write a file atomically (it is replaced whole or not at all); tried again after a blip."""
        header = pb.WriteFileHeader(
            sandbox_id=sandbox_id, path=path, mode=mode, create_parents=create_parents, size=len(data)
        )

        async def messages() -> AsyncIterator[bytes]:
            # Encoded here, each chunk copied once (protobuf would copy it twice).
            yield pb.WriteFileRequest(header=header).SerializeToString()
            view = memoryview(data)
            for start in range(0, len(view), WRITE_CHUNK):
                yield write_data(view[start : start + WRITE_CHUNK])

        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = loop.time()
            try:
                return await self._send_stream(
                    f"writing {path}",
                    lambda requests: self._file_calls()[1](requests, metadata=self._metadata),
                    messages(),
                )
            except HostUnreachable as exc:
                attempt += 1
                # The write is atomic: one that failed left the old file, so sending it again is safe.
                if exc.silent or attempt >= RETRY_ATTEMPTS or loop.time() - started >= BLIP_S:
                    raise
            await asyncio.sleep(retry_pause(attempt))

    async def stat(self, sandbox_id: str, path: str) -> pb.FileInfo:
        """Describe a path; ``exists`` is false when nothing is there."""
        request = pb.PathRequest(sandbox_id=sandbox_id, path=path)
        return await self._unary(
            f"inspecting {path}", lambda: self.stub.Stat(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
        )

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[pb.FileInfo]:
        """The entries of a directory, sorted by path; symlinks are reported, not followed."""
        request = pb.PathRequest(sandbox_id=sandbox_id, path=path)
        response = await self._unary(
            f"listing {path}", lambda: self.stub.ListDir(request, metadata=self._metadata, timeout=CALL_TIMEOUT_S)
        )
        return list(response.entries)

    # ----- workspace snapshots

    async def manifest(
        self, sandbox_id: str, paths: builtins.list[str] | None = None
    ) -> builtins.list[pb.ManifestEntry]:
        """sha256, size and mode of every file and symlink under ``paths`` (workspace-relative; None = all)."""
        request = pb.ManifestRequest(sandbox_id=sandbox_id, paths=paths or [])
        response = await self._unary(
            "listing the workspace",
            lambda: self.stub.Manifest(request, metadata=self._metadata, timeout=MANIFEST_TIMEOUT_S),
        )
        return list(response.entries)

    async def manifest_delta(
        self,
        sandbox_id: str,
        *,
        since: str = "",
        exclude: Iterable[str] = (),
        gitignore: bool = False,
        max_file_bytes: int = 0,
        paths: builtins.list[str] | None = None,
    ) -> pb.ManifestResponse:
        """The workspace's manifest, or (with ``since``, an earlier answer's ``token``) what changed since.

        The answer says which it is (``delta``): a host that no longer knows the
        token, or a token made with other rules, gets a full answer. ``exclude`` is
        gitignore-style; ``gitignore`` also honours the workspace's ``.gitignore``
        files; larger regular files than ``max_file_bytes`` (0 = no limit) are
        listed in ``skipped`` instead.
        """
        request = pb.ManifestRequest(
            sandbox_id=sandbox_id,
            paths=paths or [],
            since=since,
            exclude=list(exclude),
            gitignore=gitignore,
            max_file_bytes=max_file_bytes,
        )
        return await self._unary(
            "listing the workspace",
            lambda: self.stub.Manifest(request, metadata=self._metadata, timeout=MANIFEST_TIMEOUT_S),
        )

    async def export(
        self, sandbox_id: str, paths: builtins.list[str] | None = None, raw_paths: builtins.list[bytes] | None = None
    ) -> AsyncIterator[bytes]:
        """A tar stream of ``paths`` and ``raw_paths`` (exact bytes; workspace-relative; none = all), chunk by chunk."""
        request = pb.ExportRequest(sandbox_id=sandbox_id, paths=paths or [], raw_paths=raw_paths or [])
        stream = self._read_stream(
            "exporting the workspace", lambda: self.stub.Export(request, metadata=self._metadata)
        )
        async for chunk in stream:
            yield chunk.data

    async def import_tar(
        self, sandbox_id: str, chunks: AsyncIterator[bytes] | builtins.list[bytes] | bytes
    ) -> pb.ImportResponse:
        """Unpack a tar stream (bytes, or chunks) into the workspace."""

        async def messages() -> AsyncIterator[pb.ImportRequest]:
            yield pb.ImportRequest(sandbox=pb.SandboxRef(sandbox_id=sandbox_id))
            if isinstance(chunks, bytes):
                for start in range(0, len(chunks), WRITE_CHUNK):
                    yield pb.ImportRequest(data=chunks[start : start + WRITE_CHUNK])
            elif isinstance(chunks, list):
                for chunk in chunks:
                    yield pb.ImportRequest(data=chunk)
            else:
                async for chunk in chunks:
                    yield pb.ImportRequest(data=chunk)

        return await self._send_stream(
            "importing into the workspace",
            lambda requests: self.stub.Import(requests, metadata=self._metadata),
            messages(),
        )


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""glibc ``mallopt`` parameters (malloc.h)."""

KEPT_FREE_BYTES = 16 << 20
"""Freed memory glibc's malloc keeps for reuse in this process (see ``keep_freed_memory``): enough for a
1 MiB file's chunks and its joined bytes many times over, and little beside a TUI's ~100 MiB."""


@functools.cache
def keep_freed_memory() -> None:
    """Have glibc's malloc reuse freed memory for file data instead of handing it back to the kernel.

    Every message gRPC receives is a new bytes object (up to a MiB of file data), and so
    is a file's joined content. With glibc's defaults such blocks are mapped and unmapped
    one by one, or trimmed off the heap once freed, and the next one faults its pages in
    again, zeroed: 480 page faults per 1 MiB ReadFile (in 256 KiB chunks), about 40% of
    the client's CPU for it here (3.8 ms against 2.2 ms with this). Blocks up to the largest message now
    come from the heap, and up to ``KEPT_FREE_BYTES`` of freed heap stay mapped. Only
    glibc has these knobs; elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, MAX_MESSAGE_BYTES + (1 << 16))
    mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES)


def retry_pause(attempt: int) -> float:
    """The pause before try ``attempt + 1``: exponential from RETRY_BACKOFF_S, with jitter so clients spread out."""
    return RETRY_BACKOFF_S * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def _is_blip(exc: grpc.aio.AioRpcError, elapsed: float) -> bool:
    """Whether a failed call met a passing transport fault worth one more try (see BLIP_S)."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and elapsed < BLIP_S


class _StallWatch:
    """Cancels a streaming call that has made no progress for TRANSFER_STALL_S (one timer, not one per chunk)."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self.stalled = False
        """Whether this watch cancelled the call."""
        self._handle = self._loop.call_later(TRANSFER_STALL_S, self._check)

    def progress(self) -> None:
        """A chunk went through."""
        self._last = self._loop.time()

    def _check(self) -> None:
        idle = self._loop.time() - self._last
        if idle >= TRANSFER_STALL_S:
            self.stalled = True
            self._call.cancel()
        else:
            self._handle = self._loop.call_later(TRANSFER_STALL_S - idle, self._check)

    def stop(self) -> None:
        """No more watching."""
        self._handle.cancel()
