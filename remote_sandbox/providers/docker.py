"""The docker provider: one container per sandbox, commands run through a resident exec server.

Each sandbox is a container (``cap_drop=ALL``, ``no-new-privileges``, pids/memory/cpu
limits, no network unless the recipe asks) whose workspace is a host directory
bind-mounted at the recipe's workdir, and whose spill area (the host directory
``<workspace>/../spill``) is bind-mounted at ``record.spill_mount`` (``/tmp/tether-spill``).

Why not ``docker exec`` per command: it costs 65-90 ms here, and a coding agent runs
many small commands. Instead, at provision, one ``docker exec`` starts a small ``sh``
loop in the container (the *exec server*) that reads one-line requests from a FIFO in
a control directory (host ``<workspace>/../docker-exec``, mounted at ``/run/tether``).
Running a command then costs a few syscalls and forks, 3-6 ms in all: the host writes
the command's script (and stdin) to files, makes FIFOs for stdout, stderr and a
control channel, and writes ``run <id>`` to the request FIFO; the server forks a
*monitor* that starts the command with ``setsid`` (its own session and process group)
with its streams on those FIFOs, and reports ``pid N`` and then ``exit S`` on the
control FIFO. Killing the group is a ``kill <id> <pgid> <leader>`` request; the server
confirms ``gone`` once no process of the group is left. FIFOs on a bind mount work
because the docker engine shares this machine's kernel, which the workspace bind
mount needs anyway.

Every process still runs inside the container, under its cgroup, capability set and
``no-new-privileges``: the exec server is itself a ``docker exec`` of the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import re
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
)

CONTROL_DIR_NAME = "docker-exec"
"""The exec server's host directory, beside the workspace: request FIFO, per-command files.

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
"""How long a submitted command may go without a pid before the exec server is checked."""

DRAIN_AFTER_EXIT_S = 2.0
"""After a kill, how long to keep reading output held open by processes that left the group."""

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
# twice so each monitor is reparented to pid 1, which reaps it; the server never
# accumulates zombies. It holds the request FIFO open read-write: it never sees EOF, and
# the host's non-blocking open for writing fails with ENXIO exactly when it is gone.
# A kill also signals the leader by pid while it lives: between fork and setsid it is
# not yet the leader of its group. Once it is reaped its pid may be reused, so not then.
_SERVER_SCRIPT = """\
# tether exec server: see remote_sandbox/providers/docker.py
ctl={ctl}
exec 3<>"$ctl/requests" || exit 1
if command -v setsid >/dev/null 2>&1; then echo ready setsid; else echo ready; fi
exec </dev/null >/dev/null 2>&1
while read -r verb id pgid leader <&3; do
  case $verb in
    run) [ -f "$ctl/$id.sh" ] && ( . "$ctl/$id.sh" & ) ;;
    kill)
      kill -9 "-$pgid"
      [ "$leader" = alive ] && kill -9 "$pgid"
      n=0
      while kill -0 "-$pgid" && [ "$n" -lt 200000 ]; do n=$((n + 1)); done
      if [ "$n" -lt 200000 ]; then state=gone; else state=alive; fi
      [ -p "$ctl/$id.ctl" ] && echo "$state" 1<>"$ctl/$id.ctl" ;;
  esac
done
"""

# One command's monitor, sourced by a forked subshell of the server (no exec of a new
# shell). It writes to its control FIFO through a read-write descriptor, which never
# blocks whether or not the host still listens. The command gets its own session and
# process group from setsid; `$!` is then both its pid and its group id. When the
# directory is missing, the command becomes a `cd` that fails with the shell's own words.
_MONITOR_SCRIPT = """\
c={base}
[ -p "$c.ctl" ] || exit 0
exec 3<>"$c.ctl"
{exports}if cd -- {cwd} 2>/dev/null; then set -- {command}; else set -- /bin/sh -c 'cd -- "$1"' sh {cwd}; fi
{setsid}"$@" <{stdin} >"$c.out" 2>"$c.err" 3>&- &
p=$!
echo "pid $p" >&3
wait "$p"
echo "exit $?" >&3
"""


class DockerError(ProviderError):
    """The docker engine refused or failed a request; the message carries its words."""


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
    """Whether the image has ``setsid``; without it commands share the monitor's group."""
    server_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the exec server is (re)started."""

    @property
    def requests(self) -> Path:
        """The exec server's request FIFO, host side."""
        return self.control_dir / "requests"

    def sandbox_path(self, host_path: Path) -> str:
        """The path the sandbox sees for a file in the spill area or the control directory."""
        if host_path.is_relative_to(self.control_dir):
            return f"{CONTROL_MOUNT}/{host_path.relative_to(self.control_dir).as_posix()}"
        return f"{self.spill_mount}/{host_path.relative_to(self.spill_dir).as_posix()}"


class _FifoFeed:
    """Feeds what one FIFO's read end receives, then its EOF, into a shared queue."""

    _CHUNK = 1 << 18

    def __init__(self, stream: str, fd: int, queue: asyncio.Queue[tuple[str, bytes | None]]) -> None:
        """Read the non-blocking ``fd`` on the running loop, tagging chunks with ``stream``."""
        self.stream = stream
        """``out``, ``err`` or ``ctl``."""
        self.fd: int | None = fd
        """The read end, until EOF or ``close``."""
        self.queue = queue
        """Receives ``(stream, bytes)`` and finally ``(stream, None)``."""
        self._loop = asyncio.get_running_loop()
        self._paused = False
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        """Queue what is there; stop reading while the queue is full (back-pressure)."""
        assert self.fd is not None
        try:
            data = os.read(self.fd, self._CHUNK)
        except BlockingIOError:
            return
        if not data:
            self.close()
            self.queue.put_nowait((self.stream, None))
            return
        self.queue.put_nowait((self.stream, data))
        if self.queue.qsize() >= _QUEUE_HIGH_WATER and not self._paused:
            self._paused = True
            self._loop.remove_reader(self.fd)

    def resume(self) -> None:
        """Read again once the consumer has caught up."""
        if self._paused and self.fd is not None:
            self._paused = False
            self._loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        """Stop reading and close the read end."""
        if self.fd is not None:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None


class _CommandRun:
    """The host side of one command: its files, FIFOs, readers and what they reported."""

    def __init__(self, container: _Container) -> None:
        """Name the files of a new command; nothing is created yet."""
        self.container = container
        """The sandbox it runs in."""
        self.run_id = uuid.uuid4().hex
        """Unique name of this command's files."""
        base = container.control_dir / self.run_id
        self.base = base
        """Host path prefix of the command's files."""
        self.script = base.with_suffix(".sh")
        self.stdin_file = base.with_suffix(".in")
        self.cwd_file = base.with_suffix(".cwd")
        self.fifos = {name: base.with_suffix(f".{name}") for name in ("out", "err", "ctl")}
        self.queue: asyncio.Queue[tuple[str, bytes | None]] = asyncio.Queue()
        """Chunks and EOFs from the three FIFOs, in arrival order."""
        self.feeds: dict[str, _FifoFeed] = {}
        self._held_writers: dict[str, int] = {}
        self._ctl_buffer = b""
        self.pid: int | None = None
        """The command's pid (and process group) in the container, once reported."""
        self.exit_status: int | None = None
        """The status ``wait`` gave the monitor, once reported."""
        self.group_state: str | None = None
        """``gone`` or ``alive`` after a kill request was carried out."""
        self.open_streams = {"out", "err", "ctl"}
        """Streams that have not reached EOF."""
        self.submitted = False
        """Whether the exec server was asked to run it."""
        self.monitor_lost = False
        """Whether the monitor vanished without reporting an exit."""

    def open(self, spec: ExecSpec) -> None:
        """Write the script and stdin, make the FIFOs and start reading them."""
        if spec.stdin:
            self.stdin_file.write_bytes(spec.stdin)
        for name, path in self.fifos.items():
            os.mkfifo(path, 0o600)
            read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            # A FIFO reads as EOF while it has no writer, and the container side opens
            # its end a little later: hold a writer until that side surely has.
            self._held_writers[name] = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            self.feeds[name] = _FifoFeed(name, read_fd, self.queue)
        self.script.write_text(self._monitor_script(spec))

    def _monitor_script(self, spec: ExecSpec) -> str:
        """The monitor script that starts ``spec`` and reports on it."""
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
        stdin = '"$c.in"' if spec.stdin else "/dev/null"
        return _MONITOR_SCRIPT.format(
            base=shlex.quote(self.container.sandbox_path(self.base)),
            exports=exports,
            cwd=shlex.quote(spec.cwd),
            command=" ".join(shlex.quote(part) for part in argv),
            setsid="setsid " if self.container.has_setsid else "",
            stdin=stdin,
        )

    @property
    def ended(self) -> bool:
        """Whether the command's leader has exited (or its monitor was lost)."""
        return self.exit_status is not None or self.monitor_lost

    @property
    def output_open(self) -> bool:
        """Whether stdout or stderr has not reached EOF yet."""
        return bool(self.open_streams & {"out", "err"})

    def hold_control(self) -> None:
        """Hold a writer on the control FIFO, reopening its read end if it already hit EOF."""
        path = self.fifos["ctl"]
        feed = self.feeds.get("ctl")
        if feed is None or feed.fd is None:
            self.feeds["ctl"] = _FifoFeed("ctl", os.open(path, os.O_RDONLY | os.O_NONBLOCK), self.queue)
            self.open_streams.add("ctl")
        if "ctl" not in self._held_writers:
            self._held_writers["ctl"] = os.open(path, os.O_WRONLY | os.O_NONBLOCK)

    def release(self, *names: str) -> None:
        """Drop the held writers of ``names``: their EOF now means the container side closed."""
        for name in names:
            fd = self._held_writers.pop(name, None)
            if fd is not None:
                os.close(fd)

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
            self.release("ctl")
        elif word == "exit" and rest.isdigit():
            self.exit_status = int(rest)
            self.release("out", "err")
        elif word in ("gone", "alive"):
            self.group_state = word

    def read_cwd(self) -> str:
        """The shell's final directory as its EXIT trap wrote it, or empty."""
        try:
            return self.cwd_file.read_text(errors="replace").rstrip("\n")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop reading and delete every file of the command. Safe to call twice."""
        # The script goes first: a monitor the server has not started yet then never runs.
        for path in (self.script, self.stdin_file, self.cwd_file, *self.fifos.values()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.release(*list(self._held_writers))
        for feed in self.feeds.values():
            feed.close()


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
                "set `image` in the recipe"
            )
        workdir = record.workdir or recipe.workdir or DEFAULT_WORKDIR
        if not workdir.startswith("/"):
            raise InvalidRequest(f"workdir {workdir!r} must be an absolute path")
        if _overlaps(workdir, CONTROL_MOUNT):
            raise InvalidRequest(f"workdir {workdir!r} overlaps {CONTROL_MOUNT}, where the exec server lives")
        record.workdir = workdir
        spill_dir = record.workspace.parent / "spill"
        control_dir = record.workspace.parent / CONTROL_DIR_NAME
        spill_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(control_dir, ignore_errors=True)
        control_dir.mkdir(parents=True)
        os.mkfifo(control_dir / "requests", 0o600)
        (control_dir / "server.sh").write_text(_SERVER_SCRIPT.format(ctl=shlex.quote(CONTROL_MOUNT)))

        container_id = await asyncio.to_thread(
            self._create_container, record, image, workdir, spill_dir, control_dir
        )
        try:
            container = _Container(container_id, spill_dir, record.spill_mount, control_dir)
            await self._start_server(container)
            record.handle = container
            record.isolation = "docker"
            if not self._docker_init:
                record.warnings.append("docker-init is missing: a shell runs as pid 1 and reaps zombies")
            if not container.has_setsid:
                record.warnings.append(
                    f"image {image} has no setsid: commands share a process group with their monitor"
                )
            uname = await self.run_captured(record, "uname -srm", SETUP_TIMEOUT_S)
            record.os = uname.stdout.decode(errors="replace").strip()
            for command in recipe.setup:
                result = await self.run_captured(record, command, SETUP_TIMEOUT_S)
                if result.exit_code != 0 or result.timed_out:
                    how = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
                    output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
                    raise SandboxNotRunning(f"setup command {command!r} {how}:\n{output}")
        except BaseException:
            record.handle = None
            await asyncio.to_thread(self._remove_container, container_id)
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
            await asyncio.wait_for(
                asyncio.to_thread(self._start_server_blocking, container), SERVER_START_TIMEOUT_S
            )
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
        async with container.server_lock:
            state = await asyncio.to_thread(self._container_state, container.container_id)
            if state != "running":
                raise SandboxNotFound(f"the sandbox's container is {'gone' if state == 'gone' else state}")
            try:
                self._write_request(container, request)
                return
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
            # The container runs but its exec server was killed (by a command, say).
            await self._start_server(container)
        self._write_request(container, request)

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

    async def exec(self, record: SandboxRecord, spec: ExecSpec) -> AsyncIterator[pb.ExecEvent]:
        """Run ``spec`` in its own process group; yield Started, Output..., Exited."""
        container = record.handle
        if not isinstance(container, _Container):
            raise SandboxNotFound(f"sandbox {record.sandbox_id} has no container")
        _validate(spec)
        if not spec.cwd:
            spec = dataclasses.replace(spec, cwd=record.workdir)
        run = _CommandRun(container)
        cap = OutputCap(spec.output_cap, container.spill_dir / f"exec-{run.run_id}.log")
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        deadline = started_at + spec.timeout_s if spec.timeout_s > 0 else None
        finished = False
        try:
            run.open(spec)
            request = f"run {run.run_id}\n"
            await self._submit(container, request)
            run.submitted = True
            timed_out = False
            early: list[tuple[str, bytes]] = []  # output read before the pid: Started goes first
            pickup_check = loop.time() + PICKUP_CHECK_S
            while not (run.ended and not run.output_open):
                item = await self._next(run, deadline if run.pid is not None else _earlier(deadline, pickup_check))
                if item is None:
                    if run.pid is None and (deadline is None or loop.time() < deadline):
                        # A server killed just after our write took the request with it.
                        if not self._server_alive(container):
                            await self._submit(container, request)
                        pickup_check = loop.time() + PICKUP_CHECK_S
                        continue
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
                        for stream, data in await self._monitor_lost(container, run):
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
                # No pid was ever reported (the server could not fork, say): Started still goes first.
                yield pb.ExecEvent(started=pb.Started(pid=0))
            for stream, data in early:
                if head := cap.take(stream, data):
                    yield _output_event(stream, head)
            cap.close()
            finished = True
            yield self._exited(run, spec, cap, timed_out, loop.time() - started_at)
        finally:
            cap.close()
            if not finished and run.submitted:
                # The consumer went away (aclose, cancelled RPC) or something failed:
                # the group dies before we return, even if this task is cancelled again.
                cleanup = asyncio.ensure_future(self._kill_and_close(container, run))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                await asyncio.shield(cleanup)
            else:
                run.close()

    @staticmethod
    def _server_alive(container: _Container) -> bool:
        """Whether the exec server holds its request FIFO open (no write happens)."""
        try:
            os.close(os.open(container.requests, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    async def _next(self, run: _CommandRun, deadline: float | None) -> tuple[str, bytes | None] | None:
        """The next chunk or EOF from the command's FIFOs, or None once the deadline passed."""
        if run.queue.qsize() <= _QUEUE_HIGH_WATER // 2:
            for feed in run.feeds.values():
                feed.resume()
        if not run.queue.empty():
            return run.queue.get_nowait()
        if deadline is None:
            return await run.queue.get()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(run.queue.get(), remaining)
        except TimeoutError:
            return None

    async def _monitor_lost(self, container: _Container, run: _CommandRun) -> list[tuple[str, bytes]]:
        """The monitor vanished without reporting an exit: find out why, end the group, drain."""
        state = await asyncio.to_thread(self._container_state, container.container_id)
        if state != "running":
            raise SandboxNotFound(f"the sandbox's container is {'gone' if state == 'gone' else state}")
        # A command killed its own monitor; its group may live on, so end it.
        run.monitor_lost = True
        return await self._kill(container, run)

    async def _kill(self, container: _Container, run: _CommandRun) -> list[tuple[str, bytes]]:
        """Kill the command's whole group, confirm it is gone, and drain what is left to read."""
        drained: list[tuple[str, bytes]] = []
        loop = asyncio.get_running_loop()
        if run.pid is None:
            # Not started as far as we know: removing the script stops a late start; a
            # monitor already running reports its pid at once, so wait for that briefly.
            with contextlib.suppress(FileNotFoundError):
                run.script.unlink()
            until = loop.time() + DRAIN_AFTER_EXIT_S
            while run.pid is None and "ctl" in run.open_streams:
                item = await self._next(run, until)
                if item is None:
                    break
                self._absorb(run, item, drained)
            if run.pid is None:
                return drained
        # The monitor may close the control FIFO before the server writes `gone` to it:
        # holding a writer keeps it from reading as EOF, so the answer is not lost.
        run.hold_control()
        try:
            leader = "alive" if run.exit_status is None else "dead"
            await self._submit(container, f"kill {run.run_id} {run.pid} {leader}\n")
            until = loop.time() + KILL_CONFIRM_TIMEOUT_S
            while run.group_state is None or not run.ended:
                item = await self._next(run, until)
                if item is None:
                    break
                self._absorb(run, item, drained)
        except SandboxNotFound:
            return drained  # the container and everything in it are gone already
        finally:
            run.release("ctl")
        # Output held open by processes that escaped the group must not hold us forever.
        run.release("out", "err")
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
        """Kill the group of an abandoned command, then delete its files."""
        try:
            if not run.ended or run.output_open:
                await self._kill(container, run)
        except ProviderError:
            pass  # the sandbox is gone, and the command with it
        finally:
            run.close()

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
