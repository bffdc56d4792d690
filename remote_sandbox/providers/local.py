"""The local provider: a directory per sandbox, commands under bubblewrap when it works.

With bubblewrap every sandbox gets its own namespaces (no network unless the
recipe asks), a read-only view of the host's system directories, a minimal
``/etc``, its sandbox's own ``/tmp`` (HOME is ``/tmp/home``), the workspace
read-write at the workdir and the spill area at ``/tmp/tether-spill``. It never
sees the user's home, the session store or any credential, and its environment
is built from scratch.

Without bubblewrap (not installed, or namespaces are not allowed here) commands
are plain processes of the host user in the workspace directory. That is no
security boundary, and the provider says so loudly: in the log at start and in
every sandbox's warnings.

Under bubblewrap, each sandbox has one bubblewrap for its whole life, holding
its namespaces and running a small resident launcher (``LAUNCHER_SCRIPT``, on
the Python 3 of the host's ``/usr``) that starts each command with one
``posix_spawn``: starting bubblewrap costs 5-50 ms, a command through the
launcher about a millisecond. When no such Python exists, or ``resident=False``,
every command gets its own bubblewrap instead.

Every command runs in its own session and process group. When it ends, times
out, or its consumer goes away, the whole group is killed with SIGKILL. A
process that leaves its group (``setsid``) lives on in the sandbox, as in a
container, until the sandbox is destroyed: then bubblewrap dies and its pid
namespace, with every process in it, goes too; so it does when the host dies
(``--die-with-parent``). With one bubblewrap per command, such a process goes
when its command ends.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import glob
import json
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.output_cap import OutputCap
from remote_sandbox.providers.base import (
    ExecSpec,
    InvalidRequest,
    Provider,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxRecord,
    setup_failure,
)

log = logging.getLogger("remote_sandbox.local")

SPILL_MOUNT = "/tmp/tether-spill"
"""Where a bubblewrapped command sees its sandbox's spill area."""

SANDBOX_HOME = "/tmp/home"
"""HOME of a bubblewrapped command (inside its sandbox's own /tmp)."""

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH of a bubblewrapped command."""

SETUP_TIMEOUT_S = 600.0
"""Wall-clock limit of each recipe setup command."""

DRAIN_AFTER_EXIT_S = 2.0
"""How long output is still read after a command's group was killed (a process that left the group may hold a pipe)."""

UNSAFE_WARNING = (
    "no isolation: bubblewrap is not usable on this host ({reason}), so commands run as plain "
    "processes of the host user and can read and change anything that user can. This is no security boundary."
)
"""The warning every sandbox of an unisolated local provider carries."""

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_ENTRIES = (
    "passwd",
    "group",
    "hosts",
    "hostname",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "networks",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "alternatives",
    "ssl",
    "pki",
    "ca-certificates",
    "ca-certificates.conf",
    "crypto-policies",
    "os-release",
    "debian_version",
    "lsb-release",
    "mime.types",
    "magic",
    "inputrc",
    "terminfo",
    "shells",
    "locale.alias",
    "gitconfig",
    "bash.bashrc",
    "profile",
    "perl",
    "python3*",
)
"""What of the host's /etc a bubblewrapped command sees (read-only): enough to run, no secrets."""

# The launcher, run by the sandbox's own Python 3.8+ (`-I -S -c`), with the socket's fd
# as its last argument. Standard library only. It exits when the host closes the socket.
LAUNCHER_SCRIPT = r"""
import array, json, os, selectors, signal, socket, sys

if sys.version_info < (3, 8):
    sys.exit("tether-launcher needs Python 3.8 or later")
sock = socket.socket(fileno=int(sys.argv[-1]))
os.set_inheritable(sock.fileno(), False)
wake_read, wake_write = os.pipe()
os.set_blocking(wake_read, False)
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)
signal.signal(signal.SIGCHLD, lambda *_: None)
# Commands get the dispositions a shell would give them, not Python's.
DEFAULT_SIGNALS = [s for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT) if s]
leaders = {}  # pid -> request id


def send(message):
    sock.send(json.dumps(message).encode())


def find_program(name, path):
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def spawn(program, argv, env, fds):
    return os.posix_spawn(
        program, argv, env,
        file_actions=[(os.POSIX_SPAWN_DUP2, fds[0], 0), (os.POSIX_SPAWN_DUP2, fds[1], 1), (os.POSIX_SPAWN_DUP2, fds[2], 2)],
        setsid=True, setsigdef=DEFAULT_SIGNALS, setsigmask=[],
    )


def run(request, fds):
    if request.get("memfd"):
        with os.fdopen(os.dup(fds[3]), "rb") as memfd:
            request = json.loads(memfd.read())
    argv, env = request["argv"], request["env"]
    pid = None
    direct = request.get("direct")
    if direct:
        # Skip the shell that only changes directory: cd here, and the command inherits it.
        # Anything unusual (no such directory or program, not executable) takes the shell's way,
        # which fails with the shell's own words.
        try:
            os.chdir(request["cwd"])
            program = find_program(direct[0], env.get("PATH", ""))
            if program is not None:
                pid = spawn(program, direct, env, fds)
        except OSError:
            pid = None
    try:
        if pid is None:
            pid = spawn(argv[0], argv, env, fds)
    except OSError as error:
        send({"op": "failed", "id": request["id"], "error": "%s: %s" % (argv[0], error.strerror)})
        return
    leaders[pid] = request["id"]
    send({"op": "started", "id": request["id"], "pid": pid})


def kill(request):
    for pid, request_id in leaders.items():
        if request_id == request["id"]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def reap():
    while True:
        try:
            # WNOWAIT: the exited leader stays a zombie, so its group id is still its own
            # while the rest of the group is killed; only then is it reaped.
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        request_id = leaders.pop(info.si_pid, None)
        if request_id is not None:
            try:
                os.killpg(info.si_pid, signal.SIGKILL)
            except OSError:
                pass
        _, status = os.waitpid(info.si_pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if request_id is not None:
            send({"op": "exited", "id": request_id, "status": code})


selector = selectors.DefaultSelector()
selector.register(sock, selectors.EVENT_READ)
selector.register(wake_read, selectors.EVENT_READ)
send({"op": "ready"})
while True:
    for key, _ in selector.select():
        if key.fileobj is sock:
            data, ancillary, _, _ = sock.recvmsg(
                65536, socket.CMSG_SPACE(8 * array.array("i").itemsize), getattr(socket, "MSG_CMSG_CLOEXEC", 0)
            )
            if not data:
                sys.exit(0)
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            try:
                request = json.loads(data)
                if request["op"] == "run":
                    run(request, list(fds))
                elif request["op"] == "kill":
                    kill(request)
            finally:
                for fd in fds:
                    os.close(fd)
        else:
            try:
                while os.read(wake_read, 4096):
                    pass
            except BlockingIOError:
                pass
            reap()
"""
"""The sandbox's command launcher (see ``_Launcher``)."""

LAUNCHER_START_TIMEOUT_S = 30.0
"""How long a sandbox's command launcher may take to say it is ready."""

_QUEUE_HIGH_WATER = 64
_INLINE_REQUEST_BYTES = 32 * 1024
_MESSAGE_BYTES = 64 * 1024
_PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
_READ_SIZE = 256 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Argv commands go through a tiny shell only to change directory; `exec` keeps the pid.
_ARGV_LAUNCHER = 'cd -- "$1" || exit; shift; exec "$@"'


@dataclass(eq=False)
class _Sandbox:
    """The provider's private state for one sandbox (``SandboxRecord.handle``)."""

    root: Path
    """The sandbox's host directory (workspace, spill, tmp)."""
    bwrap: bool
    """Whether its commands run under bubblewrap."""
    running: set[_Process] = field(default_factory=set)
    """Commands running now (killed on destroy)."""
    launcher: _Launcher | None = None
    """The resident command launcher, when commands run through one."""
    launcher_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the launcher is (re)started."""
    destroyed: bool = False

    @property
    def tmp(self) -> Path:
        """The host directory that is the sandbox's /tmp."""
        return self.root / "tmp"

    @property
    def spill(self) -> Path:
        """The host directory of the spill area."""
        return self.root / "spill"


class _Feed:
    """Feeds one pipe's bytes, then its EOF, into a shared queue.

    A bare ``add_reader`` rather than an asyncio transport: a command that prints
    a line costs a few microseconds less of the host's one event loop.
    """

    def __init__(self, stream: str, pipe: IO[bytes], queue: asyncio.Queue[tuple[str, bytes | None]]) -> None:
        """Read ``pipe`` (made non-blocking) on the running loop, tagging chunks with ``stream`` (``out``/``err``)."""
        self.stream = stream
        self.queue = queue
        self._pipe: IO[bytes] | None = pipe
        self._fd = pipe.fileno()
        self._loop = asyncio.get_running_loop()
        self._paused = False
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        """Queue what is there; stop reading while the queue is full (back-pressure up to the gRPC stream)."""
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # a broken pipe ends the stream like EOF
        if not data:
            self.close()
            self.queue.put_nowait((self.stream, None))
            return
        self.queue.put_nowait((self.stream, data))
        if self.queue.qsize() >= _QUEUE_HIGH_WATER and not self._paused:
            self._paused = True
            self._loop.remove_reader(self._fd)

    def resume(self) -> None:
        """Read again once the consumer caught up."""
        if self._paused and self._pipe is not None:
            self._paused = False
            self._loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        """Stop reading and close the pipe. Safe to call twice."""
        if self._pipe is not None:
            self._loop.remove_reader(self._fd)
            self._pipe.close()
            self._pipe = None


class _Process:
    """One running command: its pipes and the events they produce; subclasses start and kill it."""

    def __init__(self, stdin: bytes) -> None:
        """Describe the command; ``start`` runs it."""
        self.stdin = stdin
        self.queue: asyncio.Queue[tuple[str, bytes | None]] = asyncio.Queue()
        """Output chunks, EOFs and finally ``("exit", None)``, in arrival order."""
        self.feeds: list[_Feed] = []
        self.launched = False
        """Whether the command was started (and so must be killed and reaped)."""
        self.exited = False
        """Whether the leader has exited (it may not be reaped yet)."""
        self.returncode: int | None = None
        """Popen-style status once known: negative for a signal."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stdin_pipe: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The leader's pid as its sandbox sees it (also its process group's id)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start the command in a new session and begin reading its output."""
        raise NotImplementedError

    def kill_group(self) -> None:
        """SIGKILL the command's whole process group (while its id is surely still ours)."""
        raise NotImplementedError

    def reap(self) -> int | None:
        """Collect the leader's status (it has exited); None if it has not."""
        return self.returncode

    async def _connect(self, stdout: IO[bytes], stderr: IO[bytes], stdin: IO[bytes] | None) -> None:
        """Read ``stdout`` and ``stderr`` into the queue; feed ``stdin`` the command's input, then close it."""
        self.feeds = [_Feed("out", stdout, self.queue), _Feed("err", stderr, self.queue)]
        if stdin is not None:
            self._stdin_pipe = stdin
            self._tasks.append(asyncio.ensure_future(self._feed_stdin(stdin)))

    def _mark_exited(self, returncode: int | None) -> None:
        """The leader has exited (``returncode`` if already known): queue the exit."""
        if self.exited:
            return
        if returncode is not None:
            self.returncode = returncode
        self.exited = True
        self.queue.put_nowait(("exit", None))

    async def _feed_stdin(self, pipe: IO[bytes]) -> None:
        """Write stdin without blocking the loop, then close it (EOF)."""
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        view = memoryview(self.stdin)
        try:
            while view:
                try:
                    written = os.write(fd, view)
                    view = view[written:]
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_writer(fd, ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_writer(fd)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command stopped reading: fine, it had its chance
        finally:
            pipe.close()

    async def next_item(self, deadline: float | None) -> tuple[str, bytes | None] | None:
        """The next output chunk, EOF or exit; None once ``deadline`` (loop time) passed."""
        if self.queue.qsize() <= _QUEUE_HIGH_WATER // 2:
            for feed in self.feeds:
                feed.resume()
        if not self.queue.empty():
            return self.queue.get_nowait()
        if deadline is None:
            return await self.queue.get()
        if deadline <= asyncio.get_running_loop().time():
            return None
        try:
            # timeout_at, not wait_for: no task per wait.
            async with asyncio.timeout_at(deadline):
                return await self.queue.get()
        except TimeoutError:
            return None

    async def wait_exit(self, timeout: float) -> None:
        """Wait until the leader exited, at most ``timeout`` seconds; other items stay queued."""
        if self.exited:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        held: list[tuple[str, bytes | None]] = []
        while not self.exited:
            item = await self.next_item(deadline)
            if item is None:
                break
            if item[0] != "exit":
                held.append(item)
        for item in held:
            self.queue.put_nowait(item)

    def close(self) -> None:
        """Release the pipes and helper tasks. The process must be dead or killed."""
        for feed in self.feeds:
            feed.close()
        for task in self._tasks:
            task.cancel()
        if self._stdin_pipe is not None:
            with contextlib.suppress(OSError):
                self._stdin_pipe.close()


class _HostProcess(_Process):
    """A command started by the host itself: a plain process, or one bubblewrap per command."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes) -> None:
        """Describe the command; ``start`` runs it."""
        super().__init__(stdin)
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None

    @property
    def pid(self) -> int:
        """The leader's pid, which is also its process group's id."""
        assert self.popen is not None
        return self.popen.pid

    async def start(self) -> None:
        """Start the command in a new session and begin reading its output."""
        loop = asyncio.get_running_loop()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            close_fds=True,
        )
        self.launched = True
        assert self.popen.stdout is not None and self.popen.stderr is not None
        await self._connect(self.popen.stdout, self.popen.stderr, self.popen.stdin)
        if hasattr(os, "pidfd_open"):
            # A pidfd says the leader exited without reaping it: the group id stays
            # reserved until we reap, so killing the group can never hit a stranger.
            self._pidfd = os.pidfd_open(self.pid)
            loop.add_reader(self._pidfd, self._on_exit)
        else:
            self._tasks.append(asyncio.ensure_future(self._wait_thread()))

    def _on_exit(self) -> None:
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self._mark_exited(None)

    async def _wait_thread(self) -> None:
        assert self.popen is not None
        self._mark_exited(await asyncio.to_thread(self.popen.wait))

    def kill_group(self) -> None:
        """SIGKILL the command's whole process group (while its id is surely still ours)."""
        if self.popen is None or self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def reap(self) -> int | None:
        """Collect the leader's status (it has exited); None if it has not."""
        if self.popen is not None and self.returncode is None and self.exited:
            self.returncode = self.popen.wait()
        return self.returncode

    def close(self) -> None:
        """Release the pipes, the pidfd and helper tasks. The process must be dead or killed."""
        super().close()
        if self._pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class _LauncherProcess(_Process):
    """A command started by its sandbox's resident launcher, which holds the leader as its child."""

    def __init__(
        self,
        launcher: _Launcher,
        argv: list[str],
        env: dict[str, str],
        stdin: bytes,
        direct: tuple[str, list[str]] | None = None,
    ) -> None:
        """Describe the command; ``start`` hands it to ``launcher``.

        ``direct`` is ``(cwd, argv)`` of an argv command the launcher may start
        without ``argv``'s shell; the shell is the fallback.
        """
        super().__init__(stdin)
        self.launcher = launcher
        self.argv = argv
        self.env = env
        self.direct = direct
        self.request_id = 0
        """The launcher's name for this command, once sent."""
        self._pid = 0

    @property
    def pid(self) -> int:
        """The leader's pid in the sandbox's pid namespace."""
        return self._pid

    async def start(self) -> None:
        """Hand the command and its pipes to the launcher; return once it runs."""
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        if self.stdin:
            in_read, in_write = os.pipe()
        else:
            in_read, in_write = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        try:
            started = self.launcher.submit(self, [in_read, out_write, err_write])
        finally:
            # The launcher has its own copies now (or the request failed): the host keeps the other ends.
            for fd in (in_read, out_write, err_write):
                os.close(fd)
        stdout, stderr = os.fdopen(out_read, "rb", buffering=0), os.fdopen(err_read, "rb", buffering=0)
        stdin = os.fdopen(in_write, "wb", buffering=0) if in_write >= 0 else None
        # Reading starts before the launcher answers: a chatty command must not fill its pipe first.
        self.launched = True
        await self._connect(stdout, stderr, stdin)
        self._pid = await started

    def kill_group(self) -> None:
        """Ask the launcher to SIGKILL the command's whole process group."""
        if self.launched and not self.exited:
            self.launcher.kill(self)

    def on_exit(self, returncode: int | None) -> None:
        """The launcher reports the leader's end (its group already killed and the leader reaped)."""
        self._mark_exited(returncode)


class LauncherError(SandboxNotRunning):
    """The sandbox's command launcher could not start, or stopped answering."""


class _Launcher:
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
        self._running: dict[int, _LauncherProcess] = {}
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

    def submit(self, process: _LauncherProcess, fds: list[int]) -> asyncio.Future[int]:
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

    def kill(self, process: _LauncherProcess) -> None:
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
        """Act on one message: ready, started, failed or exited."""
        op = message["op"]
        if op == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        request_id = message["id"]
        if not isinstance(request_id, int):
            raise TypeError("request id is not a number")
        if op == "started":
            pid = message["pid"]
            if not isinstance(pid, int):
                raise TypeError("pid is not a number")
            future = self._started.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(pid)
        elif op == "failed":
            future = self._started.pop(request_id, None)
            failed = self._running.pop(request_id, None)
            if failed is not None:
                failed.on_exit(None)  # nothing runs: nothing to wait for or kill
            if future is not None and not future.done():
                future.set_exception(SandboxNotRunning(f"could not start the command: {message['error']}"))
        elif op == "exited":
            status = message["status"]
            if not isinstance(status, int):
                raise TypeError("status is not a number")
            process = self._running.pop(request_id, None)
            if process is not None:
                process.on_exit(status)
        else:
            raise ValueError(f"unknown message {op!r}")

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
        for future in self._started.values():
            if not future.done():
                future.set_exception(error)
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


def _probe_bwrap(bwrap: str) -> str | None:
    """None if bubblewrap can make a sandbox here, else why not."""
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    args += _system_binds() + ["--proc", "/proc", "--dev", "/dev", "--", "/bin/sh", "-c", ":"]
    try:
        result = subprocess.run(args, capture_output=True, timeout=30, check=False, env={"PATH": SANDBOX_PATH})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not run: {exc}"
    if result.returncode != 0:
        return f"{bwrap} failed: {result.stderr.decode(errors='replace').strip() or result.returncode}"
    return None


def _system_binds() -> list[str]:
    """Read-only binds of the host's system directories, symlinks kept as on merged-/usr systems."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _etc_binds() -> list[str]:
    """Read-only binds of the few /etc entries commands need; never the whole of /etc."""
    args = ["--dir", "/etc"]
    seen: set[str] = set()
    for pattern in _ETC_ENTRIES:
        for path in sorted(glob.glob(f"/etc/{pattern}")):
            if path in seen or not os.path.exists(path):
                continue
            seen.add(path)
            args += ["--ro-bind", path, path]
    if "/etc/mtab" not in seen:
        args += ["--symlink", "../proc/self/mounts", "/etc/mtab"]
    return args


def _validate(spec: ExecSpec) -> None:
    """Reject a spec no shell could run as asked."""
    if (spec.shell is None) == (spec.argv is None):
        raise InvalidRequest("a command needs exactly one of argv or shell")
    if spec.argv is not None and not spec.argv:
        raise InvalidRequest("argv is empty: name a program to run")
    for name, value in spec.env.items():
        if not _ENV_NAME.match(name):
            raise InvalidRequest(f"environment variable name {name!r} is not valid in a shell")
        if "\0" in value:
            raise InvalidRequest(f"environment variable {name} contains a NUL byte")
    if any("\0" in text for text in [spec.cwd, spec.shell or "", *(spec.argv or [])]):
        raise InvalidRequest("the command or its directory contains a NUL byte")


def _exit_status(returncode: int | None) -> tuple[int, int]:
    """``(exit_code, signal)`` from a Popen status of the launching shell (or of bwrap)."""
    if returncode is None:
        return -1, 0
    if returncode < 0:
        return -1, -returncode
    if 128 < returncode <= 128 + 64:
        # Shells and bwrap report death by signal N as 128+N; an explicit `exit 137`
        # looks the same and is far rarer, so it reads as a signal, as docker does.
        return -1, returncode - 128
    return returncode, 0


class LocalProvider(Provider):
    """Sandboxes as host directories; commands under bubblewrap, or plain (and unsafe) without it."""

    name = "local"

    def __init__(
        self, *, use_bwrap: bool | None = None, resident: bool | None = None, allow_base: list[Path] | None = None
    ) -> None:
        """Use bubblewrap if it works here (``use_bwrap`` None), always (True), or never (False).

        Under bubblewrap, ``resident`` chooses how commands start: through one
        resident launcher per sandbox (True; None = when a Python 3 is visible in
        the sandbox, else one bubblewrap per command) or one bubblewrap per
        command (False). ``allow_base`` lists the host directories a recipe's
        ``base`` may be copied from; a tenant must not be able to copy arbitrary
        host files into its sandbox.
        """
        self.allow_base = [Path(p).resolve() for p in (allow_base or [])]
        """Directories under which ``recipe.base`` may point."""
        bwrap = shutil.which("bwrap")
        reason = None
        if use_bwrap is False:
            reason = "disabled by configuration"
        elif bwrap is None:
            reason = "bwrap is not installed"
        else:
            reason = _probe_bwrap(bwrap)
        if use_bwrap and reason is not None:
            raise RuntimeError(f"bubblewrap was required but is not usable: {reason}")
        self.bwrap = bwrap if reason is None else None
        """The bwrap executable, or None when commands run unisolated."""
        self.unsafe_reason = reason
        """Why there is no isolation, or None."""
        self.launcher_python = _sandbox_python() if self.bwrap and resident is not False else None
        """The Python the sandboxes' command launchers run, or None: one bubblewrap per command."""
        if resident and self.bwrap and self.launcher_python is None:
            raise RuntimeError("a resident launcher was required but no Python 3 is visible in the sandbox")
        self._cleanups: set[asyncio.Future[None]] = set()
        self._sandboxes: set[_Sandbox] = set()
        self._launcher_proven = False
        if reason is not None:
            log.warning("WARNING: local sandbox provider: %s", UNSAFE_WARNING.format(reason=reason))
            self._static_args: list[str] = []
        else:
            self._static_args = _system_binds() + _etc_binds()
            if self.launcher_python is None:
                log.info(
                    "local sandbox provider: one bubblewrap per command (no Python 3 in the sandbox for a launcher)"
                )

    # ----- lifecycle

    async def provision(self, record: SandboxRecord) -> None:
        """Prepare the sandbox's directories, copy the base, start its launcher, run the setup commands."""
        recipe = record.recipe
        root = record.state_root
        sandbox = _Sandbox(root=root, bwrap=self.bwrap is not None)
        (sandbox.tmp / "home").mkdir(parents=True, exist_ok=True)
        sandbox.spill.mkdir(exist_ok=True)
        if recipe.base and record.workspace_dir:
            # Copying a base would write into the user's own directory.
            raise InvalidRequest(
                "a recipe with a 'base' cannot be used with a direct workspace: the base would be copied into it"
            )
        if recipe.base:
            await self._copy_base(recipe.base, record.workspace)
        if sandbox.bwrap:
            record.workdir = record.workdir or recipe.workdir or "/workspace"
            record.spill_mount = SPILL_MOUNT
            network = "network on" if recipe.network else "no network"
            record.isolation = f"bubblewrap: namespaces, read-only system, {network}; no cpu/memory/pids limits"
        else:
            record.workdir = str(record.workspace)
            record.spill_mount = str(sandbox.spill)
            record.isolation = "none: plain host processes (no security boundary)"
            record.warnings.append(UNSAFE_WARNING.format(reason=self.unsafe_reason))
        if recipe.image:
            record.warnings.append(
                f"the local provider ignores the recipe's image {recipe.image!r}: commands use this host's system"
            )
        record.os = f"{platform.system()} {platform.release()} {platform.machine()}"
        record.handle = sandbox
        self._sandboxes.add(sandbox)
        if self.launcher_python is not None:
            try:
                await self._launcher(sandbox, record)
                self._launcher_proven = True
            except LauncherError as exc:
                if self._launcher_proven:
                    await self.destroy(record)
                    raise
                # It never worked on this host (an old Python, say): one bubblewrap per command, as before.
                log.warning("local sandbox provider: no command launcher (%s); one bubblewrap per command", exc)
                self.launcher_python = None
                sandbox.launcher = None
            except BaseException:
                await self.destroy(record)
                raise
        for command in recipe.setup:
            spec = ExecSpec(argv=None, shell=command, cwd=record.workdir, timeout_s=SETUP_TIMEOUT_S, output_cap=1 << 24)
            output = bytearray()
            exited = None
            async for event in self.exec(record, spec):
                if event.HasField("output"):
                    output += event.output.data
                elif event.HasField("exited"):
                    exited = event.exited
            if exited is None or exited.exit_code != 0 or exited.timed_out:
                await self.destroy(record)
                if exited is None:
                    how = "ended without an exit status"
                elif exited.timed_out:
                    how = f"timed out after {SETUP_TIMEOUT_S:.0f} s"
                elif exited.signal:
                    how = f"was killed by signal {exited.signal}"
                else:
                    how = f"exited with code {exited.exit_code}"
                tail = output.decode(errors="replace")[-4000:]
                raise SandboxNotRunning(setup_failure(command, how, tail))

    async def _copy_base(self, base: str, workspace: Path) -> None:
        """Copy the recipe's base directory into the new workspace (symlinks as symlinks)."""
        source = Path(base).expanduser()
        if not source.is_absolute():
            raise InvalidRequest(f"recipe base {base!r} must be an absolute path on the sandbox host")
        source = source.resolve()
        if not any(source == root or root in source.parents for root in self.allow_base):
            raise InvalidRequest(
                f"recipe base {base!r} is not allowed on this host "
                "(the host operator can allow directories with --allow-base DIR)"
            )
        if not source.is_dir():
            raise InvalidRequest(f"recipe base {base!r} is not a directory on the sandbox host")
        await asyncio.to_thread(shutil.copytree, source, workspace, symlinks=True, dirs_exist_ok=True)

    async def _launcher(self, sandbox: _Sandbox, record: SandboxRecord) -> _Launcher:
        """The sandbox's running launcher, started (again, if a command ended the last one) when needed."""
        async with sandbox.launcher_lock:
            if sandbox.destroyed:
                raise SandboxNotFound(f"sandbox {record.sandbox_id} is gone")
            if sandbox.launcher is not None and sandbox.launcher.alive:
                return sandbox.launcher
            if sandbox.launcher is not None:
                await sandbox.launcher.wait_stopped(DRAIN_AFTER_EXIT_S)
            assert self.launcher_python is not None
            inner = [self.launcher_python, "-I", "-S", "-c", LAUNCHER_SCRIPT, "tether-launcher"]
            argv = [*self._bwrap_args(sandbox, record), "--setenv", "PATH", SANDBOX_PATH, "--", *inner]
            launcher = _Launcher(argv, {"PATH": SANDBOX_PATH}, sandbox.root)
            sandbox.launcher = launcher
            await launcher.start(LAUNCHER_START_TIMEOUT_S)
            return launcher

    async def destroy(self, record: SandboxRecord) -> None:
        """Kill everything running in the sandbox; the server removes its directory. Idempotent."""
        sandbox = record.handle
        if not isinstance(sandbox, _Sandbox):
            return
        sandbox.destroyed = True
        self._sandboxes.discard(sandbox)
        for process in list(sandbox.running):
            process.kill_group()
        if sandbox.launcher is not None:
            sandbox.launcher.stop()
            await sandbox.launcher.wait_stopped(DRAIN_AFTER_EXIT_S * 5)

    async def is_running(self, record: SandboxRecord) -> bool:
        """Whether the sandbox exists and was not destroyed."""
        sandbox = record.handle
        return isinstance(sandbox, _Sandbox) and not sandbox.destroyed and record.workspace.is_dir()

    # ----- commands

    def _bwrap_args(self, sandbox: _Sandbox, record: SandboxRecord) -> list[str]:
        """bubblewrap up to its environment: namespaces, mounts, the workdir; ``--clearenv`` last."""
        assert self.bwrap is not None
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if record.recipe.network:
            args.append("--share-net")
        args += ["--hostname", "sandbox", *self._static_args, "--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", str(sandbox.tmp), "/tmp"]
        args += ["--bind", str(sandbox.spill), record.spill_mount]
        args += ["--bind", str(record.workspace), record.workdir]
        return [*args, "--chdir", record.workdir, "--clearenv"]

    def _command(
        self, sandbox: _Sandbox, record: SandboxRecord, spec: ExecSpec, cwd_file: str | None
    ) -> tuple[list[str], dict[str, str]]:
        """The argv (as the sandbox runs it) and complete environment of ``spec``."""
        if spec.shell is not None:
            script = f"cd -- {shlex.quote(spec.cwd)} || exit\n"
            if cwd_file is not None:
                # An EXIT trap reports the directory even when the script calls `exit`.
                script += f"trap {shlex.quote(f'pwd >{shlex.quote(cwd_file)}')} EXIT\n"
            argv = ["/bin/sh", "-c", script + spec.shell]
        else:
            assert spec.argv is not None
            argv = ["/bin/sh", "-c", _ARGV_LAUNCHER, "sh", spec.cwd, *spec.argv]
        env = {"LANG": "C.UTF-8", "TERM": "dumb"}
        if sandbox.bwrap:
            env.update(PATH=SANDBOX_PATH, HOME=SANDBOX_HOME, TMPDIR="/tmp")
        else:
            env.update(
                PATH=os.environ.get("PATH") or SANDBOX_PATH, HOME=str(sandbox.tmp / "home"), TMPDIR=str(sandbox.tmp)
            )
        env.update(record.recipe.env)
        env.update(spec.env)
        return argv, env

    async def _process(
        self, sandbox: _Sandbox, record: SandboxRecord, spec: ExecSpec, cwd_file: str | None
    ) -> _Process:
        """The process that will run ``spec``: through the launcher, one bubblewrap, or plain."""
        argv, env = self._command(sandbox, record, spec, cwd_file)
        if not sandbox.bwrap:
            return _HostProcess(argv, env, record.workspace, spec.stdin)
        if self.launcher_python is not None:
            direct = (spec.cwd, spec.argv) if spec.argv is not None else None
            return _LauncherProcess(await self._launcher(sandbox, record), argv, env, spec.stdin, direct)
        args = self._bwrap_args(sandbox, record)
        for name, value in env.items():
            args += ["--setenv", name, value]
        return _HostProcess([*args, "--", *argv], {"PATH": SANDBOX_PATH}, sandbox.root, spec.stdin)

    async def exec(self, record: SandboxRecord, spec: ExecSpec) -> AsyncIterator[pb.ExecEvent]:
        """Run ``spec`` in its own process group; yield Started, Output..., Exited."""
        sandbox = record.handle
        if not isinstance(sandbox, _Sandbox) or sandbox.destroyed:
            raise SandboxNotFound(f"sandbox {record.sandbox_id} is gone")
        _validate(spec)
        exec_id = secrets.token_hex(8)
        report = spec.report_cwd and spec.shell is not None
        cwd_host = sandbox.spill / f"exec-{exec_id}.cwd" if report else None
        cwd_file = f"{record.spill_mount}/exec-{exec_id}.cwd" if report else None
        process = await self._process(sandbox, record, spec, cwd_file)
        cap = OutputCap(spec.output_cap, sandbox.spill / f"exec-{exec_id}.log")
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        deadline = started_at + spec.timeout_s if spec.timeout_s > 0 else None
        finished = False
        try:
            try:
                await process.start()
            except OSError as exc:
                raise SandboxNotRunning(f"could not start the command: {exc}") from None
            sandbox.running.add(process)
            yield pb.ExecEvent(started=pb.Started(pid=process.pid))
            open_streams = {"out", "err"}
            timed_out = False
            while open_streams or not process.exited:
                item = await process.next_item(deadline)
                if item is None:
                    if process.exited:
                        break  # only output held by escaped processes is left: stop waiting
                    timed_out = True
                    process.kill_group()
                    await process.wait_exit(DRAIN_AFTER_EXIT_S)
                    deadline = loop.time() + DRAIN_AFTER_EXIT_S
                    continue
                stream, data = item
                if stream == "exit":
                    # The command is done; whatever it left behind in its group goes too.
                    process.kill_group()
                    drain_until = loop.time() + DRAIN_AFTER_EXIT_S
                    deadline = drain_until if deadline is None else min(deadline, drain_until)
                elif data is None:
                    open_streams.discard(stream)
                elif head := cap.take(stream, data):
                    kind = pb.Output.STDOUT if stream == "out" else pb.Output.STDERR
                    yield pb.ExecEvent(output=pb.Output(stream=kind, data=head))
            process.reap()
            cap.close()
            exit_code, signal_number = _exit_status(process.returncode)
            if timed_out:
                exit_code, signal_number = -1, signal.SIGKILL
            cwd = ""
            if cwd_host is not None:
                with contextlib.suppress(OSError):
                    cwd = cwd_host.read_text(errors="replace").rstrip("\n")
            finished = True
            yield pb.ExecEvent(
                exited=pb.Exited(
                    exit_code=exit_code,
                    signal=int(signal_number),
                    timed_out=timed_out,
                    truncated=cap.truncated,
                    spill_path=f"{record.spill_mount}/{cap.spill_file.name}" if cap.truncated else "",
                    stdout_bytes=cap.counts["out"],
                    stderr_bytes=cap.counts["err"],
                    cwd=cwd,
                    duration_ms=int((loop.time() - started_at) * 1000),
                )
            )
        finally:
            cap.close()
            if cwd_host is not None:
                with contextlib.suppress(OSError):
                    cwd_host.unlink()
            if process.launched and not finished:
                # The consumer went away (aclose, cancelled RPC) or something failed:
                # the whole group dies before this returns; reaping may finish later.
                process.kill_group()
                cleanup = asyncio.ensure_future(self._finish_killed(sandbox, process))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                await asyncio.shield(cleanup)
            else:
                process.close()
                sandbox.running.discard(process)

    @staticmethod
    async def _finish_killed(sandbox: _Sandbox, process: _Process) -> None:
        """Wait for a killed leader to exit, reap it (no zombie is left) and release its pipes."""
        try:
            await process.wait_exit(DRAIN_AFTER_EXIT_S * 5)
            process.reap()
        finally:
            process.close()
            sandbox.running.discard(process)

    async def close(self) -> None:
        """Wait for the reaping of killed commands, then stop the launchers (sandbox files stay)."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        for sandbox in list(self._sandboxes):
            if sandbox.launcher is not None:
                sandbox.launcher.stop()
                await sandbox.launcher.wait_stopped(DRAIN_AFTER_EXIT_S * 5)


def _sandbox_python() -> str | None:
    """A Python 3 interpreter a bubblewrapped command can run (it sees only the system directories), or None."""
    candidates = [os.path.realpath(sys.executable), *_PYTHON_CANDIDATES]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        inside = any(real.startswith(d + "/") for d in _SYSTEM_DIRS)
        if inside and os.access(real, os.X_OK) and re.search(r"python3(\.\d+)?\Z", real):
            return real
    return None
