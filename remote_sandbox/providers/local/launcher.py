"""The host side of a local sandbox's resident command launcher (``launcher_main``)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
from importlib import resources
from pathlib import Path
from typing import Protocol

from remote_sandbox.providers.base import SandboxNotRunning

log = logging.getLogger("remote_sandbox.local")

LAUNCHER_START_TIMEOUT_S = 30.0
"""How long a sandbox's command launcher may take to say it is ready."""

_INLINE_REQUEST_BYTES = 32 * 1024
_MESSAGE_BYTES = 64 * 1024


def launcher_source() -> str:
    """The launcher's Python source, as the sandbox's ``python3 -c`` runs it."""
    return resources.files(__package__).joinpath("launcher_main.py").read_text()


class LaunchedCommand(Protocol):
    """What the launcher needs of a command it starts."""

    argv: list[str]
    """The command line, through a shell."""
    env: dict[str, str]
    """Its whole environment."""
    direct: tuple[str, list[str]] | None
    """``(cwd, argv)`` to start without the shell, when that may be tried."""
    request_id: int
    """The launcher's name for it, once sent."""

    def on_exit(self, returncode: int | None) -> None:
        """The launcher reports the leader's end (its group already killed and the leader reaped)."""
        ...


class LauncherError(SandboxNotRunning):
    """The sandbox's command launcher could not start, or stopped answering."""


class Launcher:
    """A sandbox's resident command launcher: one bubblewrap for the sandbox's life, running ``LAUNCHER_SCRIPT``.

    Starting bubblewrap costs 5-50 ms (namespaces, dozens of mounts); the
    launcher pays that once per sandbox, then starts each command with one
    ``posix_spawn`` inside the namespaces (about a millisecond). Requests go
    over a ``SOCK_SEQPACKET`` socket pair, each with the command's stdin,
    stdout and stderr attached (``SCM_RIGHTS``), so output flows through
    ordinary pipes straight to the host. Its messages are untrusted: a command
    can kill or ptrace it, so anything odd ends the launcher (and with it every
    process of the sandbox), and the next command starts a fresh one.
    """

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        """Prepare the bubblewrap command line that runs the launcher; ``start`` runs it."""
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        """The bubblewrap process that holds the sandbox's namespaces."""
        self.alive = False
        """Whether the launcher answers requests."""
        self._socket: socket.socket | None = None
        self._ready: asyncio.Future[None] | None = None
        self._started: dict[int, asyncio.Future[int]] = {}
        self._running: dict[int, LaunchedCommand] = {}
        self._next_id = 1

    async def start(self, timeout: float) -> None:
        """Start bubblewrap and the launcher in it; return once it said ready."""
        loop = asyncio.get_running_loop()
        host_end, sandbox_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [*self.argv, str(sandbox_end.fileno())]
            # Started from the loop's own thread: bubblewrap's --die-with-parent follows the thread that forked it.
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                pass_fds=[sandbox_end.fileno()],
                start_new_session=True,
            )
        except OSError as exc:
            host_end.close()
            raise LauncherError(f"could not start bubblewrap: {exc}") from None
        finally:
            sandbox_end.close()
        host_end.setblocking(False)
        self._socket = host_end
        self._ready = loop.create_future()
        loop.add_reader(host_end.fileno(), self._on_readable)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.stop("did not say it was ready in time")
            raise LauncherError(f"the sandbox's command launcher did not start within {timeout:g} s") from None
        except LauncherError:
            self.stop("failed to start")
            raise
        self.alive = True

    def submit(self, process: LaunchedCommand, fds: list[int]) -> asyncio.Future[int]:
        """Send ``process`` to the launcher with its ``[stdin, stdout, stderr]``; the future gives its pid."""
        if not self.alive or self._socket is None:
            raise LauncherError("the sandbox's command launcher is not running")
        request_id = self._next_id
        self._next_id += 1
        request = {"op": "run", "id": request_id, "argv": process.argv, "env": process.env}
        if process.direct is not None:
            request.update(direct=process.direct[1], cwd=process.direct[0])
        payload = json.dumps(request).encode()
        attached = list(fds)
        memfd = -1
        if len(payload) > _INLINE_REQUEST_BYTES:
            # Long scripts (a heredoc of a whole file) go in a memory file beside the message.
            memfd = os.memfd_create("tether-request", os.MFD_CLOEXEC)
            _write_all(memfd, payload)
            payload = json.dumps({"op": "run", "id": request_id, "memfd": True}).encode()
            attached.append(memfd)
        try:
            self._socket.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", attached))])
        except OSError as exc:
            self.stop(f"could not take a request ({exc.strerror})")
            raise LauncherError(f"the sandbox's command launcher stopped taking commands: {exc.strerror}") from None
        finally:
            if memfd >= 0:
                os.close(memfd)
        process.request_id = request_id
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._started[request_id] = started
        self._running[request_id] = process
        return started

    def kill(self, process: LaunchedCommand) -> None:
        """Ask the launcher to kill ``process``'s whole group; its exit is reported as usual."""
        if not self.alive or self._socket is None:
            return
        try:
            self._socket.send(json.dumps({"op": "kill", "id": process.request_id}).encode())
        except OSError as exc:
            self.stop(f"could not take a kill request ({exc.strerror})")

    def _on_readable(self) -> None:
        """Handle every message the launcher sent; anything malformed ends it."""
        assert self._socket is not None
        while self._socket is not None:
            try:
                data = self._socket.recv(_MESSAGE_BYTES)  # recv, not recvmsg: descriptors it attaches are dropped
            except BlockingIOError:
                return
            except OSError as exc:
                self.stop(f"its socket failed ({exc.strerror})")
                return
            if not data:
                self.stop("it exited")
                return
            try:
                self._handle(json.loads(data))
            except (ValueError, TypeError, KeyError) as exc:
                self.stop(f"it sent a malformed message ({exc})")
                return

    def _handle(self, message: dict[str, object]) -> None:
        """Act on one message: ready, started, failed, exited, or ran (started and exited)."""
        op = message["op"]
        if op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        request_id = message["id"]
        if not isinstance(request_id, int):
            raise TypeError("request id is not a number")
        if op in ("started", "ran"):
            pid = message["pid"]
            if not isinstance(pid, int):
                raise TypeError("pid is not a number")
            future = self._started.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(pid)
            if op == "ran":
                # A command that ended before its pid was told: both in one message.
                self._exited(request_id, message["status"])
        elif op == "failed":
            future = self._started.pop(request_id, None)
            failed = self._running.pop(request_id, None)
            if failed is not None:
                failed.on_exit(None)  # nothing runs: nothing to wait for or kill
            if future is not None and not future.done():
                future.set_exception(SandboxNotRunning(f"could not start the command: {message['error']}"))
        elif op == "exited":
            self._exited(request_id, message["status"])
        else:
            raise ValueError(f"unknown message {op!r}")

    def _exited(self, request_id: int, status: object) -> None:
        """The command ``request_id`` ended with wait status ``status``."""
        if not isinstance(status, int):
            raise TypeError("status is not a number")
        process = self._running.pop(request_id, None)
        if process is not None:
            process.on_exit(status)

    def stop(self, why: str = "") -> None:
        """Kill bubblewrap, and with its pid namespace every process of the sandbox; fail whatever waits."""
        if why and self.alive:
            log.warning("sandbox command launcher stopped: %s", why)
        self.alive = False
        if self._socket is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        if self.popen is not None and self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        error = LauncherError(f"the sandbox's command launcher stopped{': ' + why if why else ''}")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        # A command whose pid was not told yet may have been running (the launcher tells it late, with its
        # end, see ANNOUNCE_AFTER_S): like every other command, it went with the namespace (SIGKILL below).
        for future in self._started.values():
            if not future.done():
                future.set_result(0)
        self._started.clear()
        # The pid namespace went with bubblewrap: SIGKILL is what every command got.
        for process in self._running.values():
            process.on_exit(-signal.SIGKILL)
        self._running.clear()

    async def wait_stopped(self, timeout: float) -> None:
        """Reap bubblewrap after ``stop`` (at most ``timeout`` seconds), so no zombie is left."""
        if self.popen is None:
            return
        popen = self.popen
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(popen.wait, timeout)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` and rewind it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
