"""The docker provider: one container per sandbox, commands run through resident shell workers.

Each sandbox is a container (``cap_drop=ALL``, ``no-new-privileges``, pids/memory/cpu
limits, no network unless the recipe asks) whose workspace is a host directory
bind-mounted at the recipe's workdir, and whose spill area (the host directory
``<workspace>/../spill``) is bind-mounted at ``record.spill_mount`` (``/tmp/tether-spill``).

Why not ``docker exec`` per command: it costs 65-90 ms here, and a coding agent runs
many small commands. Instead, at provision, one ``docker exec`` starts a small ``sh``
loop in the container (the *exec server*) that reads one-line requests from a FIFO in
a control directory (host ``<workspace>/../docker-exec``, mounted at ``/run/tether``).
The server only forks *workers* and kills process groups; commands run in workers.

A worker is a resident ``sh`` with its own FIFOs, made once by the host: ``W.req``
(requests), ``W.ctl`` (what it reports), ``W.out`` and ``W.err`` (the command's
streams), and a script file ``W.sh``. Between commands the worker keeps a *runner*
ready: a shell already started under ``setsid`` (its own session and process group),
blocked reading ``W.req``. Running a command on an idle worker costs the host one
in-place script write, one 4-byte request and two FIFO opens; the runner reports
``pid N`` and ``exec``s the command (same pid, so it is also the group id) with its
streams on the FIFOs; the worker waits for it, reports ``exit N S`` and starts the next
runner. The fork and the execs of ``setsid`` and ``sh`` are paid between commands, not
during one. No ``mkfifo``, no per-command monitor, no polling anywhere: everything on
the host is driven by the event loop's readers. Concurrent commands use more workers;
the server forks one on demand (``spawn W``); up to ``MAX_IDLE_WORKERS`` stay.

Killing a group is a ``kill W <pgid> <leader>`` request to the server (``kill`` is a
builtin, so it works even when a fork bomb exhausts the pids limit); it confirms
``gone`` on the worker's control FIFO once no process of the group is left. A worker
is reused only after a clean run (exit seen, both streams at EOF, any kill confirmed);
otherwise it is told to quit and its files are removed. FIFOs on a bind mount work
because the docker engine shares this machine's kernel, which the workspace bind
mount needs anyway.

Every process still runs inside the container, under its cgroup, capability set and
``no-new-privileges``: the exec server is itself a ``docker exec`` of the container.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import os
import re
import select
import shlex
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.utils.socket import frames_iter

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.output_cap import OutputCap
from remote_sandbox.providers.base import (
    ExecSpec,
    InvalidRequest,
    LimitExceeded,
    Provider,
    ProviderError,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxRecord,
    setup_failure,
)

CONTROL_DIR_NAME = "docker-exec"
"""The exec server's host directory, beside the workspace: request FIFOs, workers' files.

Not inside the spill area: the harness reads files there, and reading a FIFO would hang
it or steal a request.
"""

CONTROL_MOUNT = "/run/tether"
"""Where the sandbox sees the exec server's directory."""

DEFAULT_WORKDIR = "/workspace"
"""The workspace path in the container when neither the record nor the recipe names one."""

DEFAULT_PIDS_LIMIT = 1024
"""Pids limit when the recipe sets none: an unlimited container lets a fork bomb reach the host."""

KEEP_ALIVE_COMMAND = ["sleep", "2147483647"]
"""The container's main process under docker-init: does nothing, for 68 years."""

REAPER_INIT_COMMAND = [
    "/bin/sh",
    "-c",
    # Used only when the engine has no docker-init. A shell as pid 1 ignores signals it
    # has no trap for, so TERM is trapped; `wait` calls waitpid(-1), which also reaps
    # orphans reparented to pid 1.
    "trap 'exit 0' TERM; while :; do sleep 2147483647 & wait $!; done",
]
"""The container's main process when docker-init is missing: a keep-alive that reaps zombies."""

SETUP_TIMEOUT_S = 600.0
"""Wall-clock limit of each recipe setup command."""

SERVER_START_TIMEOUT_S = 30.0
"""How long the exec server may take to say ``ready``."""

KILL_CONFIRM_TIMEOUT_S = 10.0
"""How long to wait for a killed group to be confirmed gone."""

PICKUP_CHECK_S = 1.0
"""How long a worker being spawned may go without saying ``ready`` before the exec server is checked."""

DRAIN_AFTER_EXIT_S = 2.0
"""After a kill, how long to keep reading output held open by processes that left the group."""

MAX_IDLE_WORKERS = 4
"""Idle workers kept per sandbox; one more that finishes is told to quit (each holds a pid)."""

_QUEUE_HIGH_WATER = 64
"""Output chunks buffered per command before reading from its FIFOs pauses."""

_LABEL_SANDBOX = "tether.sandbox"
_LABEL_HOST = "tether.host"
_LABEL_TENANT = "tether.tenant"
_LABEL_TTL = "tether.ttl"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")

# The exec server. It reads requests with the `read` builtin (one byte at a time from a
# FIFO, so it never swallows the next request), and `kill` is a builtin too: a fork bomb
# that exhausts the pids limit cannot stop it from killing the bomb. `( ... & )` forks
# twice so each worker is reparented to pid 1, which reaps it; the server never
# accumulates zombies. It holds the request FIFO open read-write: it never sees EOF, and
# the host's non-blocking open for writing fails with ENXIO exactly when it is gone.
# A kill also signals the leader by pid while it lives: in an image without setsid it
# leads no group of its own. Once it is reaped its pid may be reused, so not then.
_SERVER_SCRIPT = """\
# tether exec server: see remote_sandbox/providers/docker.py
ctl={ctl}
exec 3<>"$ctl/requests" || exit 1
if command -v setsid >/dev/null 2>&1; then echo ready setsid; else echo ready; fi
exec </dev/null >/dev/null 2>&1
while read -r verb w pgid leader <&3; do
  case $verb in
    spawn) [ -p "$ctl/$w.req" ] && ( w=$ctl/$w; . "$ctl/worker.sh" & ) ;;
    kill)
      kill -9 "-$pgid"
      [ "$leader" = alive ] && kill -9 "$pgid"
      n=0
      while kill -0 "-$pgid" && [ "$n" -lt 200000 ]; do n=$((n + 1)); done
      if [ "$n" -lt 200000 ]; then state=gone; else state=alive; fi
      [ -p "$ctl/$w.ctl" ] && echo "$state" 1<>"$ctl/$w.ctl" ;;
  esac
done
"""

# One worker, sourced by a forked subshell of the server with `w` set to its path prefix.
# Its control FIFO is fd 3 and its request FIFO fd 4, both opened read-write: writes to
# fd 3 never block whether or not the host listens, and fd 4 never reads as EOF. Opening
# fd 3 also closes the server's request FIFO that the fork inherited, so the server's
# death still shows on the host. The worker keeps one *runner* started ahead of time:
# a shell that is already a session leader (setsid: its own session and process group)
# and waits for the next request, so the fork and the execs of setsid and sh are paid
# between commands, not during one. The worker waits for it and reports its end with
# its pid, then starts the next; once the host has retired it (its files are gone) it stops.
_WORKER_SCRIPT = """\
# tether exec worker: see remote_sandbox/providers/docker.py
exec 3<>"$w.ctl" 4<>"$w.req" || exit 1
s=setsid
command -v setsid >/dev/null 2>&1 || s=
echo ready >&3
while [ -p "$w.req" ]; do
  $s /bin/sh "$ctl/runner.sh" "$w" <&4 3>&- 4>&- &
  r=$!
  wait $r
  echo "exit $r $?" >&3
done
"""

# One runner: reads one request from its stdin (the worker's request FIFO; `read` stops at
# the newline), reports its pid, and sources the command's script, which replaces it with
# the command. It writes its pid through a descriptor of its own that it closes at once:
# an idle runner holds no control FIFO, so a dead worker shows on the host as EOF.
_RUNNER_SCRIPT = """\
# tether exec runner: see remote_sandbox/providers/docker.py
w=$1
read -r verb || exit 0
[ "$verb" = run ] || exit 0
echo "pid $$" 1<>"$w.ctl"
. "$w.sh"
"""

# One command, written to the worker's W.sh and sourced by its runner, whose environment
# and directory it may change freely. `exec` makes the runner the command (same pid, so
# the pid is also the group id), with its streams on the worker's FIFOs. When the
# directory is missing, the command becomes a `cd` that fails with the shell's own words.
_RUN_SCRIPT = """\
{exports}if cd -- {cwd} 2>/dev/null; then set -- {command}; else set -- /bin/sh -c 'cd -- "$1"' sh {cwd}; fi
exec "$@" <{stdin} >"$w.out" 2>"$w.err"
"""


class DockerError(ProviderError):
    """The docker engine refused or failed a request; the message carries its words."""


class _Events:
    """Chunks and EOFs from a command's FIFOs, in arrival order, with a cheap timed wait.

    An ``asyncio.Queue`` with ``wait_for`` would start a task per wait (Python 3.11); a
    command waits several times, and every ~50 us counts on a 3 ms round trip.
    """

    def __init__(self) -> None:
        """An empty buffer."""
        self.items: collections.deque[tuple[str, bytes | None]] = collections.deque()
        """What arrived and was not taken yet."""
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: tuple[str, bytes | None]) -> None:
        """Add one item and wake the waiting consumer."""
        self.items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, deadline: float | None) -> tuple[str, bytes | None] | None:
        """The next item, or None once the loop time ``deadline`` has passed (None: never)."""
        if not self.items:
            loop = asyncio.get_running_loop()
            if deadline is not None and deadline <= loop.time():
                return None
            waiter = self._waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self.items:
                return None
        return self.items.popleft()


def _wake(waiter: asyncio.Future[None]) -> None:
    """Resolve ``waiter`` if nothing else has."""
    if not waiter.done():
        waiter.set_result(None)


class _FifoFeed:
    """Feeds what one FIFO's read end receives, then its EOF, into an ``_Events``."""

    _CHUNK = 1 << 18

    def __init__(self, stream: str, fd: int, events: _Events, *, owns_fd: bool = True, watch: bool = True) -> None:
        """Read the non-blocking ``fd`` on the running loop (from ``start`` if not ``watch``), tagging chunks with ``stream``."""
        self.stream = stream
        """``out``, ``err`` or ``ctl``."""
        self.fd: int | None = fd
        """The read end, until EOF or ``close`` (when owned) or ``stop``."""
        self.events = events
        """Receives ``(stream, bytes)`` and finally ``(stream, None)``."""
        self.owns_fd = owns_fd
        """Whether EOF and ``close`` close the descriptor (a worker's control FIFO outlives a run)."""
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._paused = False
        if watch:
            self.start()

    def start(self) -> None:
        """Watch the descriptor (again, after an EOF of a descriptor not owned)."""
        if self.fd is not None and not self._reading:
            self._loop.add_reader(self.fd, self._readable)
            self._reading, self._paused = True, False

    def stop(self) -> None:
        """Stop watching the descriptor; it stays open."""
        if self.fd is not None and self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False

    def _readable(self) -> None:
        """Queue what is there; stop reading while the buffer is full (back-pressure)."""
        assert self.fd is not None
        try:
            data = os.read(self.fd, self._CHUNK)
        except BlockingIOError:
            return
        if not data:
            self.close()
            self.events.put((self.stream, None))
            return
        self.events.put((self.stream, data))
        if len(self.events.items) >= _QUEUE_HIGH_WATER and not self._paused:
            self.stop()
            self._paused = True

    def resume(self) -> None:
        """Read again once the consumer has caught up."""
        if self._paused:
            self.start()

    def close(self) -> None:
        """Stop reading, and close the read end if this feed owns it."""
        self.stop()
        if self.fd is not None and self.owns_fd:
            os.close(self.fd)
            self.fd = None


class _Worker:
    """The host side of one resident worker shell: its files and the descriptors kept open."""

    def __init__(self, control_dir: Path, name: str) -> None:
        """Name the worker's files in ``control_dir``; nothing is created yet."""
        self.name = name
        """``w<N>``, unique within its sandbox."""
        self.paths = {suffix: control_dir / f"{name}.{suffix}" for suffix in ("req", "ctl", "out", "err", "sh")}
        """Host paths of its request, control, stdout and stderr FIFOs and its script file."""
        self.ctl_fd: int | None = None
        """The read end of its control FIFO, open from before it starts until it is retired."""
        self.req_fd: int | None = None
        """The write end of its request FIFO, once it said ``ready``."""
        self.script_fd: int | None = None
        """Its script file, open for rewriting in place."""
        self._script_size = 0

    def make_files(self) -> None:
        """Make the FIFOs and open the control FIFO's read end."""
        for suffix in ("req", "ctl", "out", "err"):
            os.mkfifo(self.paths[suffix], 0o600)
        self.ctl_fd = os.open(self.paths["ctl"], os.O_RDONLY | os.O_NONBLOCK)
        self.script_fd = os.open(self.paths["sh"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write_script(self, script: str) -> None:
        """Replace the script the worker sources next.

        Rewritten in place, never truncated to zero: ext4 flushes a file truncated to
        zero and rewritten when it is closed, which costs milliseconds per command.
        """
        assert self.script_fd is not None
        data = script.encode()
        os.pwrite(self.script_fd, data, 0)
        if len(data) < self._script_size:
            os.ftruncate(self.script_fd, len(data))
        self._script_size = len(data)

    def request(self, line: bytes) -> None:
        """Write one request line (atomic: shorter than PIPE_BUF); OSError if the worker is gone."""
        if self.req_fd is None:
            raise BrokenPipeError(errno.EPIPE, "the worker never started")
        os.write(self.req_fd, line)

    def alive(self) -> bool:
        """Whether the worker still holds its control FIFO: once it is gone, the read end hangs up."""
        if self.ctl_fd is None:
            return False
        poller = select.poll()
        poller.register(self.ctl_fd, select.POLLIN)
        return not any(events & select.POLLHUP for _fd, events in poller.poll(0))

    def retire(self) -> None:
        """Delete the worker's files, wake its idle runner with ``quit`` and close the host's ends.

        The files go first: the worker stops when it finds its request FIFO gone, right
        after its runner ends (at once if idle, else when the command ends).
        """
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.req_fd is None and self.ctl_fd is not None:
            # Never said ready, or not yet: if it did start, it reads this all the same.
            with contextlib.suppress(OSError):
                self.req_fd = os.open(self.paths["req"], os.O_WRONLY | os.O_NONBLOCK)
        if self.req_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.req_fd, b"quit\n")
        for fd in (self.req_fd, self.ctl_fd, self.script_fd):
            if fd is not None:
                os.close(fd)
        self.req_fd = self.ctl_fd = self.script_fd = None


@dataclass
class _Container:
    """The provider's private state for one sandbox (``SandboxRecord.handle``)."""

    container_id: str
    """The docker container id."""
    spill_dir: Path
    """The host directory mounted at ``spill_mount``."""
    spill_mount: str
    """Where the sandbox sees ``spill_dir``."""
    control_dir: Path
    """The host side of the exec server's directory (mounted at ``CONTROL_MOUNT``)."""
    has_setsid: bool = True
    """Whether the image has ``setsid``; without it commands share the server's process group."""
    server_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the exec server is (re)started."""
    idle: list[_Worker] = field(default_factory=list)
    """Workers waiting for a command, most recently used last."""
    workers: set[_Worker] = field(default_factory=set)
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


class _CommandRun:
    """The host side of one command on one worker: its files, readers and what they reported."""

    def __init__(self, container: _Container, worker: _Worker) -> None:
        """Name the files of a new command; nothing is created yet."""
        self.container = container
        """The sandbox it runs in."""
        self.worker = worker
        """The worker that runs it."""
        self.run_id = uuid.uuid4().hex
        """Unique name of this command's own files (stdin, final directory, spill)."""
        self._own_files: list[Path] = []
        self.events = _Events()
        """Chunks and EOFs from the three FIFOs, in arrival order."""
        self.feeds: dict[str, _FifoFeed] = {}
        self._held_ctl: int | None = None
        self._ctl_buffer = b""
        self.pid: int | None = None
        """The command's pid (and process group) in the container, once reported."""
        self.exit_status: int | None = None
        """The status ``wait`` gave the worker for this command's pid, once reported."""
        self.kill_sent = False
        """Whether the exec server was asked to kill the group."""
        self.group_state: str | None = None
        """``gone`` or ``alive`` after a kill request was carried out."""
        self.open_streams = {"out", "err", "ctl"}
        """Streams that have not reached EOF."""
        self.worker_lost = False
        """Whether the worker vanished without reporting an exit."""

    @property
    def stdin_file(self) -> Path:
        """Where the command's stdin is written, when it has one."""
        return self.container.control_dir / f"{self.run_id}.in"

    @property
    def cwd_file(self) -> Path:
        """Where the shell's EXIT trap writes its final directory, when asked to."""
        return self.container.control_dir / f"{self.run_id}.cwd"

    def open(self, spec: ExecSpec) -> None:
        """Write the script and stdin, and open the read ends of the worker's FIFOs (``watch`` reads them)."""
        if spec.stdin:
            self._own_files.append(self.stdin_file)
            self.stdin_file.write_bytes(spec.stdin)
        if spec.report_cwd:
            self._own_files.append(self.cwd_file)
        self.worker.write_script(self._run_script(spec))
        assert self.worker.ctl_fd is not None
        self.feeds["ctl"] = _FifoFeed("ctl", self.worker.ctl_fd, self.events, owns_fd=False, watch=False)
        # Opened afresh per command, before the request: the kernel reports no EOF on a
        # read end until a writer has come and gone since it was opened.
        for name in ("out", "err"):
            fd = os.open(self.worker.paths[name], os.O_RDONLY | os.O_NONBLOCK)
            self.feeds[name] = _FifoFeed(name, fd, self.events, watch=False)

    def watch(self) -> None:
        """Start reading the FIFOs; called once the request is out, so the container starts sooner."""
        for feed in self.feeds.values():
            feed.start()

    def _run_script(self, spec: ExecSpec) -> str:
        """The script the worker sources to start ``spec`` and report on it."""
        exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in spec.env.items())
        if spec.shell is not None:
            script = spec.shell
            if spec.report_cwd:
                cwd_file = shlex.quote(self.container.sandbox_path(self.cwd_file))
                # Same line as the script, so the shell's error messages keep its line numbers.
                script = f"trap {shlex.quote(f'pwd >{cwd_file}')} EXIT; {script}"
            argv = ["/bin/sh", "-c", script]
        else:
            assert spec.argv is not None
            argv = spec.argv
        stdin = shlex.quote(self.container.sandbox_path(self.stdin_file)) if spec.stdin else "/dev/null"
        return _RUN_SCRIPT.format(
            exports=exports,
            cwd=shlex.quote(spec.cwd),
            command=" ".join(shlex.quote(part) for part in argv),
            stdin=stdin,
        )

    @property
    def ended(self) -> bool:
        """Whether the command's leader has exited (or its worker was lost)."""
        return self.exit_status is not None or self.worker_lost

    @property
    def output_open(self) -> bool:
        """Whether stdout or stderr has not reached EOF yet."""
        return bool(self.open_streams & {"out", "err"})

    @property
    def clean(self) -> bool:
        """Whether the worker may run another command: it reported the exit and nothing is left over."""
        return (
            self.exit_status is not None
            and self.pid is not None
            and not self.worker_lost
            and self.open_streams == {"ctl"}
            and (not self.kill_sent or self.group_state == "gone")
            and self._held_ctl is None
        )

    def hold_control(self) -> None:
        """Hold a writer on the control FIFO and read it again if it already hit EOF.

        The worker may be gone (that is why we kill): the server's ``gone`` then comes
        from a writer that opens and closes at once, and must not be lost.
        """
        if self._held_ctl is None:
            self._held_ctl = os.open(self.worker.paths["ctl"], os.O_WRONLY | os.O_NONBLOCK)
        if "ctl" not in self.open_streams:
            self.open_streams.add("ctl")
            self.feeds["ctl"].start()

    def release_control(self) -> None:
        """Drop the held writer of the control FIFO."""
        if self._held_ctl is not None:
            os.close(self._held_ctl)
            self._held_ctl = None

    def take_control_lines(self, data: bytes) -> list[str]:
        """Split control-channel bytes into complete lines."""
        self._ctl_buffer += data
        *lines, self._ctl_buffer = self._ctl_buffer.split(b"\n")
        return [line.decode("ascii", "replace") for line in lines]

    def note_control(self, line: str) -> None:
        """Record what one control line says."""
        word, _, rest = line.partition(" ")
        if word == "pid" and rest.isdigit():
            self.pid = int(rest)
        elif word == "exit":
            # `exit PID STATUS`; another pid's is a runner that died before taking this
            # command (a command of an earlier run killed it, say).
            pid, _, status = rest.partition(" ")
            if self.pid is not None and pid == str(self.pid) and status.isdigit():
                self.exit_status = int(status)
        elif word in ("gone", "alive"):
            self.group_state = word

    def read_cwd(self) -> str:
        """The shell's final directory as its EXIT trap wrote it, or empty."""
        try:
            return self.cwd_file.read_text(errors="replace").rstrip("\n")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop reading and delete the command's own files. Safe to call twice."""
        self.release_control()
        for feed in self.feeds.values():
            feed.close()
        for path in self._own_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _overlaps(first: str, second: str) -> bool:
    """Whether one absolute path is the other or lies under it."""
    first, second = os.path.normpath(first).rstrip("/") + "/", os.path.normpath(second).rstrip("/") + "/"
    return first.startswith(second) or second.startswith(first)


def _earlier(first: float | None, second: float) -> float:
    """The earlier of two loop times, where None means never."""
    return second if first is None else min(first, second)


def _output_event(stream: str, data: bytes) -> pb.ExecEvent:
    """An Output event for ``out`` or ``err`` bytes."""
    kind = pb.Output.STDOUT if stream == "out" else pb.Output.STDERR
    return pb.ExecEvent(output=pb.Output(stream=kind, data=data))


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
    texts = [spec.cwd, spec.shell or "", *(spec.argv or [])]
    if any("\0" in text for text in texts):
        raise InvalidRequest("the command or its directory contains a NUL byte")


class DockerProvider(Provider):
    """Sandboxes as docker containers, with a resident exec server for fast commands."""

    name = "docker"

    def __init__(
        self,
        default_image: str = "",
        host_id: str = "",
        client: docker.DockerClient | None = None,
    ) -> None:
        """Use ``client`` (or one from the environment, which ``close`` then closes)."""
        self.default_image = default_image
        """The image for recipes that name none; empty means such recipes are refused."""
        self.host_id = host_id
        """This host's id, written on every container so a later run can reconcile."""
        self._owns_client = client is None
        if client is None:
            try:
                client = docker.from_env()
            except docker.errors.DockerException as error:
                raise DockerError(f"cannot reach the docker engine (is dockerd running?): {error}") from None
        self.client = client
        """The docker SDK client."""
        self._docker_init: bool | None = None
        self._cleanups: set[asyncio.Task[None]] = set()

    # ----- lifecycle

    async def provision(self, record: SandboxRecord) -> None:
        """Create and start the container, start its exec server, run the recipe's setup."""
        recipe = record.recipe
        image = recipe.image or self.default_image
        if not image:
            raise InvalidRequest(
                "the recipe names no image and this docker host has no default image: "
                'set `image = "IMAGE"` in the recipe (a TOML file given to --recipe), '
                "or start the host with `tether sandbox serve --provider docker --default-image IMAGE`"
            )
        workdir = record.workdir or recipe.workdir or DEFAULT_WORKDIR
        if not workdir.startswith("/"):
            raise InvalidRequest(f"workdir {workdir!r} must be an absolute path")
        if _overlaps(workdir, CONTROL_MOUNT):
            raise InvalidRequest(f"workdir {workdir!r} overlaps {CONTROL_MOUNT}, where the exec server lives")
        record.workdir = workdir
        spill_dir = record.state_root / "spill"
        control_dir = record.state_root / CONTROL_DIR_NAME
        spill_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(control_dir, ignore_errors=True)
        control_dir.mkdir(parents=True)
        os.mkfifo(control_dir / "requests", 0o600)
        (control_dir / "server.sh").write_text(_SERVER_SCRIPT.format(ctl=shlex.quote(CONTROL_MOUNT)))
        (control_dir / "worker.sh").write_text(_WORKER_SCRIPT)
        (control_dir / "runner.sh").write_text(_RUNNER_SCRIPT)

        container_id = await asyncio.to_thread(self._create_container, record, image, workdir, spill_dir, control_dir)
        container = _Container(container_id, spill_dir, record.spill_mount, control_dir)
        try:
            await self._start_server(container)
            record.handle = container
            record.isolation = "docker"
            if not self._docker_init:
                record.warnings.append("docker-init is missing: a shell runs as pid 1 and reaps zombies")
            if not container.has_setsid:
                record.warnings.append(
                    f"image {image} has no setsid: commands share a process group with the exec server"
                )
            uname = await self.run_captured(record, "uname -srm", SETUP_TIMEOUT_S)
            record.os = uname.stdout.decode(errors="replace").strip()
            for command in recipe.setup:
                result = await self.run_captured(record, command, SETUP_TIMEOUT_S)
                if result.exit_code != 0 or result.timed_out:
                    how = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
                    output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
                    raise SandboxNotRunning(setup_failure(command, how, output))
        except BaseException:
            record.handle = None
            await asyncio.to_thread(self._remove_container, container_id)
            container.close_workers()
            shutil.rmtree(control_dir, ignore_errors=True)
            raise

    def _create_container(
        self, record: SandboxRecord, image: str, workdir: str, spill_dir: Path, control_dir: Path
    ) -> str:
        """Create and start the container (blocking); returns its id."""
        recipe = record.recipe
        labels = {
            **dict(recipe.labels),
            _LABEL_SANDBOX: record.sandbox_id,
            _LABEL_HOST: self.host_id,
            _LABEL_TENANT: record.tenant,
            _LABEL_TTL: str(recipe.idle_ttl_seconds),
        }
        options: dict[str, object] = {
            "labels": labels,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": recipe.limits.pids or DEFAULT_PIDS_LIMIT,
            "network_mode": "bridge" if recipe.network else "none",
            "volumes": {
                str(record.workspace): {"bind": workdir, "mode": "rw"},
                str(spill_dir): {"bind": record.spill_mount, "mode": "rw"},
                str(control_dir): {"bind": CONTROL_MOUNT, "mode": "rw"},
            },
            # The host's ids, so files written in the bind mounts belong to the host user.
            "user": f"{os.getuid()}:{os.getgid()}",
            "working_dir": workdir,
            "environment": dict(recipe.env),
            "detach": True,
        }
        if recipe.limits.memory_bytes:
            options["mem_limit"] = recipe.limits.memory_bytes
        if recipe.limits.cpus:
            options["nano_cpus"] = int(recipe.limits.cpus * 1e9)
        if _CONTAINER_NAME.match(record.sandbox_id):
            options["name"] = f"tether-{record.sandbox_id}"
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise InvalidRequest(f"image {image!r} is not on this docker host; pull or build it first") from None
        except docker.errors.APIError as error:
            raise DockerError(f"docker could not inspect image {image!r}: {error.explanation or error}") from None

        if self._docker_init is None:
            self._docker_init = bool(self.client.info().get("InitBinary"))
        while True:
            if self._docker_init:
                command, init = KEEP_ALIVE_COMMAND, True
            else:
                command, init = REAPER_INIT_COMMAND, False
            container = None
            try:
                container = self.client.containers.create(image, command, init=init, **options)
                container.start()
                return container.id
            except docker.errors.APIError as error:
                if container is not None:
                    self._remove_container(container.id)
                message = str(error.explanation or error)
                if init and "docker-init" in message:
                    self._docker_init = False
                    continue
                raise SandboxNotRunning(f"docker could not start a container from {image!r}: {message}") from None

    def _remove_container(self, container_id: str) -> None:
        """Force-remove a container (blocking); a container already gone is fine."""
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True)

    async def _start_server(self, container: _Container) -> None:
        """Start the exec server with one docker exec and wait for its ``ready``."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._start_server_blocking, container), SERVER_START_TIMEOUT_S)
        except TimeoutError:
            raise SandboxNotRunning("the exec server did not start in time") from None

    def _start_server_blocking(self, container: _Container) -> None:
        """Exec the server script and read its stdout until ``ready`` (blocking).

        The ready line also says whether the image has ``setsid``.
        """
        api = self.client.api
        try:
            created = api.exec_create(
                container.container_id,
                ["/bin/sh", container.sandbox_path(container.control_dir / "server.sh")],
                stdout=True,
                stderr=True,
            )
            sock = api.exec_start(created["Id"], socket=True)
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
                    container.has_setsid = line == b"ready setsid"
                    return
        finally:
            # The server sends nothing more on this stream; it keeps running without it.
            sock.close()
        raise SandboxNotRunning(
            "the exec server stopped before it was ready (does the image have /bin/sh, and does "
            f"the docker engine share this machine's files?): {output.decode(errors='replace').strip()}"
        )

    async def destroy(self, record: SandboxRecord) -> None:
        """Remove the container with everything running in it. Idempotent."""
        container = record.handle
        if isinstance(container, _Container):
            await asyncio.to_thread(self._remove_container, container.container_id)
            container.close_workers()
            shutil.rmtree(container.control_dir, ignore_errors=True)
        # A provision interrupted half-way may have left a container without a handle.
        for container_id in await asyncio.to_thread(self._labelled, _LABEL_SANDBOX, record.sandbox_id):
            await asyncio.to_thread(self._remove_container, container_id)
        record.handle = None

    def _labelled(self, label: str, value: str) -> list[str]:
        """Ids of all containers, running or not, with ``label=value`` (blocking)."""
        found = self.client.api.containers(all=True, filters={"label": f"{label}={value}"})
        return [entry["Id"] for entry in found]

    async def is_running(self, record: SandboxRecord) -> bool:
        """Whether the container exists and is running."""
        container = record.handle
        if not isinstance(container, _Container):
            return False
        return await asyncio.to_thread(self._container_state, container.container_id) == "running"

    def _container_state(self, container_id: str) -> str:
        """``running``, another docker state, or ``gone`` (blocking)."""
        try:
            return self.client.api.inspect_container(container_id)["State"]["Status"]
        except docker.errors.NotFound:
            return "gone"

    async def reconcile(self, host_id: str) -> list[str]:
        """Remove containers labelled ``tether.host=<host_id>`` left by an earlier run; return their ids."""
        removed = await asyncio.to_thread(self._labelled, _LABEL_HOST, host_id)
        for container_id in removed:
            await asyncio.to_thread(self._remove_container, container_id)
        return removed

    async def close(self) -> None:
        """Finish pending kills and close the docker client if this provider opened it."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if self._owns_client:
            self.client.close()

    # ----- commands

    async def _submit(self, container: _Container, request: str) -> None:
        """Write one request line to the exec server, restarting it if it died."""
        try:
            self._write_request(container, request)
            return
        except OSError as error:
            if error.errno not in (errno.ENXIO, errno.ENOENT):
                raise
        await self._restart_server(container)
        self._write_request(container, request)

    async def _restart_server(self, container: _Container) -> None:
        """Start the exec server again if it is gone; SandboxNotFound if the container is."""
        async with container.server_lock:
            if self._server_alive(container):
                return
            state = await asyncio.to_thread(self._container_state, container.container_id)
            if state != "running":
                raise SandboxNotFound(f"the sandbox's container is {'gone' if state == 'gone' else state}")
            # The container runs but its exec server was killed (by a command, say).
            await self._start_server(container)

    @staticmethod
    def _write_request(container: _Container, request: str) -> None:
        """One non-blocking, atomic (shorter than PIPE_BUF) write to the request FIFO."""
        fd = os.open(container.requests, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, request.encode())
        except BlockingIOError:
            raise LimitExceeded("the sandbox's exec server is not keeping up with requests") from None
        finally:
            os.close(fd)

    @staticmethod
    def _server_alive(container: _Container) -> bool:
        """Whether the exec server holds its request FIFO open (no write happens)."""
        try:
            os.close(os.open(container.requests, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    async def _acquire(self, container: _Container, deadline: float | None) -> _Worker | None:
        """An idle worker, or a new one; None if ``deadline`` passed before a new one was ready."""
        if container.idle:
            return container.idle.pop()
        return await self._spawn(container, deadline)

    async def _spawn(self, container: _Container, deadline: float | None) -> _Worker | None:
        """Have the exec server fork a new worker and wait for its ``ready``."""
        container.spawned += 1
        worker = _Worker(container.control_dir, f"w{container.spawned}")
        container.workers.add(worker)
        events = _Events()
        feed: _FifoFeed | None = None
        ready = False
        try:
            worker.make_files()
            assert worker.ctl_fd is not None
            feed = _FifoFeed("ctl", worker.ctl_fd, events, owns_fd=False)
            request = f"spawn {worker.name}\n"
            await self._submit(container, request)
            loop = asyncio.get_running_loop()
            check = loop.time() + PICKUP_CHECK_S
            said = b""
            while b"ready\n" not in said:
                item = await events.get(_earlier(deadline, check))
                if item is None:
                    if deadline is not None and loop.time() >= deadline:
                        return None
                    # A server killed just after our write took the request with it.
                    if not self._server_alive(container):
                        await self._submit(container, request)
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
                self._retire(container, worker)

    @staticmethod
    def _retire(container: _Container, worker: _Worker) -> None:
        """Tell a worker to quit and forget it."""
        container.workers.discard(worker)
        with contextlib.suppress(ValueError):
            container.idle.remove(worker)
        worker.retire()

    def _finish(self, container: _Container, run: _CommandRun) -> None:
        """Close a finished run; its worker goes back to the idle pool if the run left nothing behind."""
        run.close()
        worker = run.worker
        if run.clean and worker in container.workers and len(container.idle) < MAX_IDLE_WORKERS:
            container.idle.append(worker)
        else:
            self._retire(container, worker)

    async def _start_run(self, container: _Container, spec: ExecSpec, deadline: float | None) -> _CommandRun | None:
        """Hand ``spec`` to a worker; None if no worker was ready before ``deadline``."""
        while True:
            worker = await self._acquire(container, deadline)
            if worker is None:
                return None
            if not worker.alive():
                # Killed while idle (by a command of another run, say): take another.
                self._retire(container, worker)
                continue
            run = _CommandRun(container, worker)
            try:
                run.open(spec)
                worker.request(b"run\n")
                run.watch()
            except BrokenPipeError:
                # The worker died while idle (a command killed it, say): take another.
                run.close()
                self._retire(container, worker)
                continue
            except BaseException:
                run.close()
                self._retire(container, worker)
                raise
            return run

    async def exec(self, record: SandboxRecord, spec: ExecSpec) -> AsyncIterator[pb.ExecEvent]:
        """Run ``spec`` in its own process group; yield Started, Output..., Exited."""
        container = record.handle
        if not isinstance(container, _Container):
            raise SandboxNotFound(f"sandbox {record.sandbox_id} has no container")
        _validate(spec)
        if not spec.cwd:
            spec = dataclasses.replace(spec, cwd=record.workdir)
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        deadline = started_at + spec.timeout_s if spec.timeout_s > 0 else None
        run = await self._start_run(container, spec, deadline)
        if run is None:
            # No worker could start in time (the pids limit is exhausted, say): nothing ran.
            yield pb.ExecEvent(started=pb.Started(pid=0))
            seconds = loop.time() - started_at
            yield pb.ExecEvent(exited=pb.Exited(exit_code=-1, timed_out=True, duration_ms=int(seconds * 1000)))
            return
        cap = OutputCap(spec.output_cap, container.spill_dir / f"exec-{run.run_id}.log")
        finished = False
        try:
            timed_out = False
            early: list[tuple[str, bytes]] = []  # output read before the pid: Started goes first
            while not (run.ended and not run.output_open):
                item = await self._next(run, deadline)
                if item is None:
                    timed_out = True
                    break
                stream, data = item
                if stream != "ctl":
                    if data is None:
                        run.open_streams.discard(stream)
                    elif run.pid is None:
                        early.append((stream, data))
                    elif head := cap.take(stream, data):
                        yield _output_event(stream, head)
                elif data is None:
                    run.open_streams.discard("ctl")
                    if not run.ended:
                        for stream, data in await self._worker_lost(container, run):
                            if head := cap.take(stream, data):
                                yield _output_event(stream, head)
                else:
                    had_pid = run.pid is not None
                    for line in run.take_control_lines(data):
                        run.note_control(line)
                    if run.pid is not None and not had_pid:
                        yield pb.ExecEvent(started=pb.Started(pid=run.pid))
                        for stream, data in early:
                            if head := cap.take(stream, data):
                                yield _output_event(stream, head)
                        early.clear()
            if timed_out:
                early += await self._kill(container, run)
            if run.pid is None:
                # No pid was ever reported (the worker could not fork, say): Started still goes first.
                yield pb.ExecEvent(started=pb.Started(pid=0))
            for stream, data in early:
                if head := cap.take(stream, data):
                    yield _output_event(stream, head)
            cap.close()
            if not self._server_alive(container):
                # Workers outlive the server, but kills and new workers need it: one that a
                # command killed comes back now, not when a timeout needs it. Checked at the
                # end, not the start: a SIGKILL lands asynchronously, and by now it has.
                await self._restart_server(container)
            finished = True
            yield self._exited(run, spec, cap, timed_out, loop.time() - started_at)
        finally:
            cap.close()
            if not finished:
                # The consumer went away (aclose, cancelled RPC) or something failed:
                # the group dies before we return, even if this task is cancelled again.
                cleanup = asyncio.ensure_future(self._kill_and_close(container, run))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                await asyncio.shield(cleanup)
            else:
                self._finish(container, run)

    async def _next(self, run: _CommandRun, deadline: float | None) -> tuple[str, bytes | None] | None:
        """The next chunk or EOF from the command's FIFOs, or None once the deadline passed."""
        if len(run.events.items) <= _QUEUE_HIGH_WATER // 2:
            for feed in run.feeds.values():
                feed.resume()
        return await run.events.get(deadline)

    async def _worker_lost(self, container: _Container, run: _CommandRun) -> list[tuple[str, bytes]]:
        """The worker vanished without reporting an exit: find out why, end the group, drain."""
        state = await asyncio.to_thread(self._container_state, container.container_id)
        if state != "running":
            raise SandboxNotFound(f"the sandbox's container is {'gone' if state == 'gone' else state}")
        # A command killed its own worker; its group may live on, so end it.
        run.worker_lost = True
        return await self._kill(container, run)

    async def _kill(self, container: _Container, run: _CommandRun) -> list[tuple[str, bytes]]:
        """Kill the command's whole group, confirm it is gone, and drain what is left to read."""
        drained: list[tuple[str, bytes]] = []
        loop = asyncio.get_running_loop()
        if run.pid is None:
            # Not started as far as we know; a live worker reports the pid at once, so wait briefly.
            until = loop.time() + DRAIN_AFTER_EXIT_S
            while run.pid is None and run.exit_status is None and "ctl" in run.open_streams:
                item = await self._next(run, until)
                if item is None:
                    break
                self._absorb(run, item, drained)
            if run.pid is None:
                return drained
        # The worker may be gone and its control FIFO at EOF: holding a writer keeps the
        # server's answer from being lost.
        run.hold_control()
        run.kill_sent = True
        try:
            leader = "alive" if run.exit_status is None else "dead"
            await self._submit(container, f"kill {run.worker.name} {run.pid} {leader}\n")
            until = loop.time() + KILL_CONFIRM_TIMEOUT_S
            while run.group_state is None or not run.ended:
                item = await self._next(run, until)
                if item is None:
                    break
                self._absorb(run, item, drained)
        except SandboxNotFound:
            return drained  # the container and everything in it are gone already
        finally:
            run.release_control()
        # Output held open by processes that escaped the group must not hold us forever.
        until = loop.time() + DRAIN_AFTER_EXIT_S
        while run.output_open:
            item = await self._next(run, until)
            if item is None:
                break
            self._absorb(run, item, drained)
        return drained

    @staticmethod
    def _absorb(run: _CommandRun, item: tuple[str, bytes | None], drained: list[tuple[str, bytes]]) -> None:
        """Take one item read while killing: control lines are noted, output is kept."""
        stream, data = item
        if data is None:
            run.open_streams.discard(stream)
        elif stream == "ctl":
            for line in run.take_control_lines(data):
                run.note_control(line)
        else:
            drained.append((stream, data))

    async def _kill_and_close(self, container: _Container, run: _CommandRun) -> None:
        """Kill the group of an abandoned command, then close it and settle its worker."""
        try:
            if not run.ended or run.output_open:
                await self._kill(container, run)
        except ProviderError:
            pass  # the sandbox is gone, and the command with it
        finally:
            self._finish(container, run)

    @staticmethod
    def _exited(run: _CommandRun, spec: ExecSpec, cap: OutputCap, timed_out: bool, seconds: float) -> pb.ExecEvent:
        """The Exited event for a finished command."""
        status = run.exit_status
        exit_code, signal = -1, 0
        if status is not None and 128 < status <= 128 + 64:
            # A shell reports death by signal N as 128+N; `exit 130` looks the same and
            # is far rarer, so this reads it as a signal, as docker does.
            signal = status - 128
        elif status is not None:
            exit_code = status
        exited = pb.Exited(
            exit_code=exit_code,
            signal=signal,
            timed_out=timed_out,
            truncated=cap.truncated,
            spill_path=run.container.sandbox_path(cap.spill_file) if cap.truncated else "",
            stdout_bytes=cap.counts["out"],
            stderr_bytes=cap.counts["err"],
            cwd=run.read_cwd() if spec.report_cwd and spec.shell is not None else "",
            duration_ms=int(seconds * 1000),
        )
        return pb.ExecEvent(exited=exited)

    async def run_captured(self, record: SandboxRecord, shell: str, timeout_s: float) -> CapturedRun:
        """Run a shell command in the workdir and collect its whole output (setup, probes)."""
        spec = ExecSpec(argv=None, shell=shell, cwd=record.workdir, timeout_s=timeout_s, output_cap=1 << 30)
        result = CapturedRun()
        stdout, stderr = bytearray(), bytearray()
        async for event in self.exec(record, spec):
            if event.HasField("output"):
                (stdout if event.output.stream == pb.Output.STDOUT else stderr).extend(event.output.data)
            elif event.HasField("exited"):
                result.exit_code = event.exited.exit_code
                result.timed_out = event.exited.timed_out
        result.stdout, result.stderr = bytes(stdout), bytes(stderr)
        return result


@dataclass
class CapturedRun:
    """A command's whole output and how it ended, for callers that do not stream."""

    stdout: bytes = b""
    """Everything written to standard output."""
    stderr: bytes = b""
    """Everything written to standard error."""
    exit_code: int = -1
    """The exit code, or -1 when killed by a signal."""
    timed_out: bool = False
    """Whether the timeout killed it."""
