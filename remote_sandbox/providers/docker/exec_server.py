"""A container's exec server and its pool of resident workers, as the host drives them (the transport).

At provision, one ``docker exec`` starts ``scripts/server.sh`` in the container: a
small ``sh`` loop reading one-line requests from a FIFO in the control directory
(host ``<state>/docker-exec``, mounted at ``CONTROL_MOUNT``). It only forks
workers (``spawn W``) and kills process groups (``kill W PGID LEADER``); commands
run in workers (``scripts/worker.sh``), each through a runner it keeps ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import docker
import docker.errors
from docker.utils.socket import frames_iter

from remote_sandbox.execution.stream import EventBuffer, FdFeed
from remote_sandbox.providers.base import LimitExceeded, SandboxNotFound, SandboxNotRunning
from remote_sandbox.providers.docker.workers import Worker

CONTROL_DIR_NAME = "docker-exec"
"""The exec server's host directory, beside the workspace: request FIFOs, workers' files.

Not inside the spill area: the harness reads files there, and reading a FIFO would hang
it or steal a request.
"""

CONTROL_MOUNT = "/run/tether"
"""Where the sandbox sees the exec server's directory."""

SERVER_START_TIMEOUT_S = 30.0
"""How long the exec server may take to say ``ready``."""

PICKUP_CHECK_S = 1.0
"""How long a worker being spawned may go without saying ``ready`` before the exec server is checked."""

MAX_IDLE_WORKERS = 4
"""Idle workers kept per sandbox; one more that finishes is told to quit (each holds a pid)."""

SCRIPTS = ("server.sh", "worker.sh", "runner.sh")
"""The shell scripts copied into every control directory (``scripts/`` of this package)."""


def prepare_control_dir(control_dir: Path) -> None:
    """Make a fresh control directory: the request FIFO and the scripts."""
    shutil.rmtree(control_dir, ignore_errors=True)
    control_dir.mkdir(parents=True)
    os.mkfifo(control_dir / "requests", 0o600)
    scripts = resources.files(__package__).joinpath("scripts")
    for name in SCRIPTS:
        (control_dir / name).write_text(scripts.joinpath(name).read_text())


@dataclass(eq=False)
class ContainerExec:
    """A sandbox's container and its exec server, as the host drives them (``SandboxRecord.handle``)."""

    container_id: str
    """The docker container id."""
    spill_dir: Path
    """The host directory mounted at ``spill_mount``."""
    spill_mount: str
    """Where the sandbox sees ``spill_dir``."""
    control_dir: Path
    """The host side of the exec server's directory (mounted at ``CONTROL_MOUNT``)."""
    api: docker.APIClient
    """The docker engine's API, to start the exec server with one ``docker exec``."""
    state: Callable[[str], str]
    """The container's docker state by id (blocking): ``running``, another, or ``gone``."""
    has_setsid: bool = True
    """Whether the image has ``setsid``; without it commands share the server's process group."""
    server_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the exec server is (re)started."""
    idle: list[Worker] = field(default_factory=list)
    """Workers waiting for a command, most recently used last."""
    workers: set[Worker] = field(default_factory=set)
    """Every worker not retired yet, idle or busy."""
    spawned: int = 0
    """Workers made so far (names them)."""
    requests: str = field(init=False, default="")
    """The exec server's request FIFO, host side (a string: it is opened on every command)."""

    def __post_init__(self) -> None:
        """Name the request FIFO once."""
        self.requests = os.path.join(self.control_dir, "requests")

    def sandbox_path(self, host_path: Path) -> str:
        """The path the sandbox sees for a file in the spill area or the control directory."""
        if host_path.is_relative_to(self.control_dir):
            return f"{CONTROL_MOUNT}/{host_path.relative_to(self.control_dir).as_posix()}"
        return f"{self.spill_mount}/{host_path.relative_to(self.spill_dir).as_posix()}"

    def close_workers(self) -> None:
        """Retire the idle workers and disown the busy ones, which their runs retire when they end."""
        for worker in self.idle:
            worker.retire()
        self.workers.clear()
        self.idle.clear()

    # ----- the server

    async def start_server(self) -> None:
        """Start the exec server with one docker exec and wait for its ``ready``."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._start_server_blocking), SERVER_START_TIMEOUT_S)
        except TimeoutError:
            raise SandboxNotRunning("the exec server did not start in time") from None

    def _start_server_blocking(self) -> None:
        """Exec the server script and read its stdout until ``ready`` (blocking).

        The ready line also says whether the image has ``setsid``.
        """
        server = self.sandbox_path(self.control_dir / "server.sh")
        try:
            created = self.api.exec_create(
                self.container_id, ["/bin/sh", server, CONTROL_MOUNT], stdout=True, stderr=True
            )
            sock = self.api.exec_start(created["Id"], socket=True)
        except docker.errors.NotFound:
            raise SandboxNotFound("the sandbox's container is gone") from None
        except docker.errors.APIError as error:
            raise SandboxNotRunning(f"could not start the exec server: {error.explanation or error}") from None
        output = b""
        try:
            for _stream, data in frames_iter(sock, tty=False):
                output += data
                line, newline, _ = output.partition(b"\n")
                if newline and line.startswith(b"ready"):
                    self.has_setsid = line == b"ready setsid"
                    return
        finally:
            # The server sends nothing more on this stream; it keeps running without it.
            sock.close()
        raise SandboxNotRunning(
            "the exec server stopped before it was ready (does the image have /bin/sh, and does "
            f"the docker engine share this machine's files?): {output.decode(errors='replace').strip()}"
        )

    async def submit(self, request: str) -> None:
        """Write one request line to the exec server, restarting it if it died."""
        try:
            self._write_request(request)
            return
        except OSError as error:
            if error.errno not in (errno.ENXIO, errno.ENOENT):
                raise
        await self.restart_server()
        self._write_request(request)

    async def restart_server(self) -> None:
        """Start the exec server again if it is gone; SandboxNotFound if the container is."""
        async with self.server_lock:
            if self.server_alive():
                return
            await self.check_running()
            # The container runs but its exec server was killed (by a command, say).
            await self.start_server()

    async def check_running(self) -> None:
        """SandboxNotFound unless the container is running."""
        state = await asyncio.to_thread(self.state, self.container_id)
        if state != "running":
            raise SandboxNotFound(f"the sandbox's container is {'gone' if state == 'gone' else state}")

    def _write_request(self, request: str) -> None:
        """One non-blocking, atomic (shorter than PIPE_BUF) write to the request FIFO."""
        fd = os.open(self.requests, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, request.encode())
        except BlockingIOError:
            raise LimitExceeded("the sandbox's exec server is not keeping up with requests") from None
        finally:
            os.close(fd)

    def server_alive(self) -> bool:
        """Whether the exec server holds its request FIFO open (no write happens)."""
        try:
            os.close(os.open(self.requests, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    # ----- workers

    async def acquire(self, deadline: float | None) -> Worker | None:
        """An idle worker, or a new one; None if ``deadline`` passed before a new one was ready."""
        if self.idle:
            return self.idle.pop()
        return await self._spawn(deadline)

    async def _spawn(self, deadline: float | None) -> Worker | None:
        """Have the exec server fork a new worker and wait for its ``ready``."""
        self.spawned += 1
        worker = Worker(self.control_dir, f"w{self.spawned}")
        self.workers.add(worker)
        events = EventBuffer()
        feed: FdFeed | None = None
        ready = False
        try:
            worker.make_files()
            assert worker.ctl_fd is not None
            feed = FdFeed("ctl", worker.ctl_fd, events, owns_fd=False)
            request = f"spawn {worker.name}\n"
            await self.submit(request)
            loop = asyncio.get_running_loop()
            check = loop.time() + PICKUP_CHECK_S
            said = b""
            while b"ready\n" not in said:
                item = await events.get(check if deadline is None else min(deadline, check))
                if item is None:
                    if deadline is not None and loop.time() >= deadline:
                        return None
                    # A server killed just after our write took the request with it.
                    if not self.server_alive():
                        await self.submit(request)
                    check = loop.time() + PICKUP_CHECK_S
                    continue
                if item[1] is None:
                    raise SandboxNotRunning("a new worker of the sandbox's exec server stopped at once")
                said += item[1]
            worker.req_fd = os.open(worker.paths["req"], os.O_WRONLY | os.O_NONBLOCK)
            ready = True
            return worker
        finally:
            if feed is not None:
                feed.close()
            if not ready:
                self.retire(worker)

    def retire(self, worker: Worker) -> None:
        """Tell a worker to quit and forget it."""
        self.workers.discard(worker)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        worker.retire()

    def release(self, worker: Worker, clean: bool) -> None:
        """A run on ``worker`` ended: back to the idle pool if it left nothing behind, else retire it."""
        if clean and worker in self.workers and len(self.idle) < MAX_IDLE_WORKERS:
            self.idle.append(worker)
        else:
            self.retire(worker)
