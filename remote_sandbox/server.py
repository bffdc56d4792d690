"""The sandbox host: starts and stops a ``grpc.aio`` server of the ``tether.sandbox.v1.Sandbox`` service.

``SandboxHost`` owns what lives as long as the process: the state dir (locked,
one host at a time), the provider, the listening address, the health service
and the idle reaper. What each RPC does is in ``service``; the sandboxes are in
``registry``; ``HostConfig`` and the limits are in ``config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox.auth import BearerTokenInterceptor, TokenTable
from remote_sandbox.config import MAX_MESSAGE_BYTES, TRANSPORT_MESSAGE_BYTES, HostConfig, HostStartError
from remote_sandbox.file_rpcs import serve_file_transfers
from remote_sandbox.providers.base import Provider
from remote_sandbox.registry import SandboxRegistry
from remote_sandbox.service import SERVICE_NAME, SandboxService

__all__ = ["SERVER_OPTIONS", "HostConfig", "HostStartError", "SandboxHost"]

log = logging.getLogger("remote_sandbox.server")

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


class SandboxHost:
    """A running sandbox host: gRPC server, provider, and the sandboxes of every tenant."""

    def __init__(self, config: HostConfig, provider: Provider | None = None) -> None:
        """Prepare to serve ``config``; ``provider`` overrides the one the config names."""
        config.check_limits()
        self.config = config
        """How this host runs."""
        self.tokens = TokenTable(config.tokens)
        """Who may call, as which tenant."""
        self.state_dir = Path(config.state_dir).expanduser().resolve()
        """Where sandboxes live on disk."""
        self.host_id = ""
        """Stable id of this host's state dir, written on docker containers for reconciling."""
        self.sandboxes = SandboxRegistry(config, self.state_dir)
        """Every tenant's live sandboxes."""
        self.address = ""
        """The bound address, once started."""
        self._provider = provider
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

    async def start(self) -> str:
        """Lock the state dir, start the provider and the server; return the bound address."""
        self._lock_state_dir()
        try:
            if self._provider is None:
                self._provider = await asyncio.to_thread(self._make_provider)
            self.sandboxes.provider = self._provider
            await self._adopt_and_reconcile()
            self._server = grpc.aio.server(interceptors=[BearerTokenInterceptor(self.tokens)], options=SERVER_OPTIONS)
            service = SandboxService(self.sandboxes, self._provider, self.config)
            pb_grpc.add_SandboxServicer_to_server(service, self._server)
            serve_file_transfers(self._server, SERVICE_NAME, service)
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
            reflection.enable_server_reflection(
                [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
            )
            self.address = self._bind(self._server)
            await self._server.start()
            await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
            await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            self._reaper = asyncio.ensure_future(self._reap_every_interval())
        except BaseException:
            await self._release()
            raise
        log.info(
            "sandbox host listening on %s (provider %s, state %s)", self.address, self.provider.name, self.state_dir
        )
        return self.address

    async def _adopt_and_reconcile(self) -> None:
        """Take back the sandboxes an earlier run left running (docker), remove the rest and their directories."""
        for record in await self.provider.adopt(self.host_id, self.state_dir):
            self.sandboxes.adopt(record)
            log.info("adopted sandbox %s of %s left running by an earlier run", record.sandbox_id, record.tenant)
        kept = frozenset(self.sandboxes.sandboxes)
        removed = await self.provider.reconcile(self.host_id, keep=kept)
        if removed:
            log.info("removed %d sandbox container(s) left by an earlier run", len(removed))
        leftovers = self.state_dir / "sandboxes"
        if leftovers.is_dir():
            for child in leftovers.iterdir():
                if child.name not in kept:
                    await asyncio.to_thread(shutil.rmtree, child, True)

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

    def _bind(self, server: grpc.aio.Server) -> str:
        """Add the listening port; return the address as bound (port 0 resolved)."""
        listen = self.config.listen
        for scheme in ("grpc://", "grpcs://"):
            if listen.startswith(scheme):
                listen = listen[len(scheme) :]
        credentials = self._tls_credentials()
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

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        """The server's TLS credentials from the configured files, or None for plaintext."""
        if not (self.config.tls_cert or self.config.tls_key):
            return None
        if not (self.config.tls_cert and self.config.tls_key):
            raise HostStartError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        try:
            pair = (Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())
        except OSError as exc:
            raise HostStartError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_server_credentials([pair])

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
        if self._provider is not None:
            await self.sandboxes.close(destroy=self.config.destroy_on_exit)
            with contextlib.suppress(Exception):
                await self._provider.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _reap_every_interval(self) -> None:
        """Every ``reap_interval_s``, destroy sandboxes idle past their TTL."""
        while True:
            await asyncio.sleep(self.config.reap_interval_s)
            await self.reap_idle()

    async def reap_idle(self, now_ms: int | None = None) -> list[str]:
        """Destroy sandboxes idle past their recipe's TTL (0 = never) as of ``now_ms``; return their ids.

        A sandbox running a command or a transfer is never idle.
        """
        return await self.sandboxes.reap_idle(now_ms)


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
