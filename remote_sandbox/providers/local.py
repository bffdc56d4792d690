"""The local provider: a directory per sandbox, commands under bubblewrap when it works.

With bubblewrap every command gets fresh namespaces (no network unless the
recipe asks), a read-only view of the host's system directories, a minimal
``/etc``, its sandbox's own ``/tmp`` (HOME is ``/tmp/home``), the workspace
read-write at the workdir and the spill area at ``/tmp/tether-spill``. It never
sees the user's home, the session store or any credential, and its environment
is built from scratch.

Without bubblewrap (not installed, or namespaces are not allowed here) commands
are plain processes of the host user in the workspace directory. That is no
security boundary, and the provider says so loudly: in the log at start and in
every sandbox's warnings.

Every command runs in its own session and process group. When it ends, times
out, or its consumer goes away, the whole group is killed with SIGKILL; under
bubblewrap killing bwrap takes its pid namespace, and so every process the
command started, with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.providers.base import (
    ExecSpec,
    InvalidRequest,
    Provider,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxRecord,
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

SPILL_MAX_BYTES = 256 << 20
"""A spill file stops growing here; the byte counts in Exited still tell the whole size."""

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

_QUEUE_HIGH_WATER = 64
_READ_SIZE = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Argv commands go through a tiny shell only to change directory; `exec` keeps the pid.
_ARGV_LAUNCHER = 'cd -- "$1" || exit; shift; exec "$@"'


@dataclass
class _Sandbox:
    """The provider's private state for one sandbox (``SandboxRecord.handle``)."""

    root: Path
    """The sandbox's host directory (workspace, spill, tmp)."""
    bwrap: bool
    """Whether its commands run under bubblewrap."""
    running: set[_Process] = field(default_factory=set)
    """Commands running now (killed on destroy)."""
    destroyed: bool = False

    @property
    def tmp(self) -> Path:
        """The host directory that is the sandbox's /tmp."""
        return self.root / "tmp"

    @property
    def spill(self) -> Path:
        """The host directory of the spill area."""
        return self.root / "spill"


class _Feed(asyncio.Protocol):
    """Feeds one pipe's bytes, then its EOF, into a shared queue."""

    def __init__(self, stream: str, queue: asyncio.Queue[tuple[str, bytes | None]]) -> None:
        """Tag everything read with ``stream`` (``out`` or ``err``)."""
        self.stream = stream
        self.queue = queue
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport, to pause reading when the consumer lags."""
        assert isinstance(transport, asyncio.ReadTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Queue a chunk; pause while the queue is full (back-pressure up to the gRPC stream)."""
        self.queue.put_nowait((self.stream, data))
        if self.queue.qsize() >= _QUEUE_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """Queue the end of the stream."""
        self.queue.put_nowait((self.stream, None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """A pipe closed without EOF (an error) still ends its stream."""
        if exc is not None:
            self.queue.put_nowait((self.stream, None))

    def resume(self) -> None:
        """Read again once the consumer caught up."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class _Process:
    """One running command: its process, pipes, and the events they produce."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes) -> None:
        """Describe the command; ``start`` runs it."""
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.stdin = stdin
        self.queue: asyncio.Queue[tuple[str, bytes | None]] = asyncio.Queue()
        """Output chunks, EOFs and finally ``("exit", None)``, in arrival order."""
        self.popen: subprocess.Popen[bytes] | None = None
        self.feeds: list[_Feed] = []
        self.exited = False
        """Whether the leader has exited (it may not be reaped yet)."""
        self.returncode: int | None = None
        """Popen-style status once reaped: negative for a signal."""
        self._pidfd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

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
        for name, pipe in (("out", self.popen.stdout), ("err", self.popen.stderr)):
            feed = _Feed(name, self.queue)
            await loop.connect_read_pipe(lambda feed=feed: feed, pipe)
            self.feeds.append(feed)
        if self.stdin:
            self._tasks.append(asyncio.ensure_future(self._feed_stdin()))
        if hasattr(os, "pidfd_open"):
            # A pidfd says the leader exited without reaping it: the group id stays
            # reserved until we reap, so killing the group can never hit a stranger.
            self._pidfd = os.pidfd_open(self.pid)
            loop.add_reader(self._pidfd, self._on_exit)
        else:
            self._tasks.append(asyncio.ensure_future(self._wait_thread()))

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._pidfd is not None
        loop.remove_reader(self._pidfd)
        self.exited = True
        self.queue.put_nowait(("exit", None))

    async def _wait_thread(self) -> None:
        assert self.popen is not None
        self.returncode = await asyncio.to_thread(self.popen.wait)
        self.exited = True
        self.queue.put_nowait(("exit", None))

    async def _feed_stdin(self) -> None:
        """Write stdin without blocking the loop, then close it (EOF)."""
        assert self.popen is not None and self.popen.stdin is not None
        pipe = self.popen.stdin
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
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), remaining)
        except TimeoutError:
            return None

    def kill_group(self) -> None:
        """SIGKILL the command's whole process group (while its id is surely still ours)."""
        if self.popen is None or self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

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

    def reap(self) -> int | None:
        """Collect the leader's status (it has exited); None if it has not."""
        if self.popen is None:
            return None
        if self.returncode is None and self.exited:
            self.returncode = self.popen.wait()
        return self.returncode

    def close(self) -> None:
        """Release the pipes, the pidfd and helper tasks. The process must be dead or killed."""
        for feed in self.feeds:
            if feed.transport is not None:
                feed.transport.close()
        if self._pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        for task in self._tasks:
            task.cancel()
        if self.popen is not None and self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()


class _OutputCap:
    """Streams output up to a byte cap; past it, all output goes to a spill file."""

    def __init__(self, cap: int, spill_file: Path) -> None:
        """Cap the streamed bytes at ``cap``; spill to ``spill_file`` when needed."""
        self.cap = max(cap, 0)
        self.spill_file = spill_file
        self.streamed = 0
        self.counts = {"out": 0, "err": 0}
        """All bytes seen per stream, streamed or not."""
        self._head: list[bytes] = []
        self._spill = None
        self._spilled = 0

    @property
    def truncated(self) -> bool:
        """Whether some output went only to the spill file."""
        return self._spill is not None

    def take(self, stream: str, data: bytes) -> bytes:
        """Account for a chunk; return the part that may still be streamed."""
        self.counts[stream] += len(data)
        room = self.cap - self.streamed
        if self._spill is None and len(data) <= room:
            self.streamed += len(data)
            self._head.append(data)
            return data
        if self._spill is None:
            # The spill file holds all output, so the part already streamed goes first.
            self._spill = open(self.spill_file, "wb")  # noqa: SIM115 - closed in close()
            for piece in self._head:
                self._write(piece)
            self._head.clear()
        self._write(data)
        head = data[: max(room, 0)]
        self.streamed += len(head)
        return head

    def _write(self, data: bytes) -> None:
        assert self._spill is not None
        keep = data[: max(SPILL_MAX_BYTES - self._spilled, 0)]
        if keep:
            self._spill.write(keep)
            self._spilled += len(keep)

    def close(self) -> None:
        """Finish the spill file."""
        if self._spill is not None and not self._spill.closed:
            self._spill.close()


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

    def __init__(self, *, use_bwrap: bool | None = None, allow_base: list[Path] | None = None) -> None:
        """Use bubblewrap if it works here (``use_bwrap`` None), always (True), or never (False).

        ``allow_base`` lists the host directories a recipe's ``base`` may be copied
        from; a tenant must not be able to copy arbitrary host files into its sandbox.
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
        self._cleanups: set[asyncio.Future[None]] = set()
        if reason is not None:
            log.warning("WARNING: local sandbox provider: %s", UNSAFE_WARNING.format(reason=reason))
            self._static_args: list[str] = []
        else:
            self._static_args = _system_binds() + _etc_binds()

    # ----- lifecycle

    async def provision(self, record: SandboxRecord) -> None:
        """Prepare the sandbox's directories, copy the base, run the setup commands."""
        recipe = record.recipe
        root = record.workspace.parent
        sandbox = _Sandbox(root=root, bwrap=self.bwrap is not None)
        (sandbox.tmp / "home").mkdir(parents=True, exist_ok=True)
        sandbox.spill.mkdir(exist_ok=True)
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
                raise SandboxNotRunning(f"setup command {command!r} {how}:\n{tail}")

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

    async def destroy(self, record: SandboxRecord) -> None:
        """Kill everything running in the sandbox; the server removes its directory. Idempotent."""
        sandbox = record.handle
        if not isinstance(sandbox, _Sandbox):
            return
        sandbox.destroyed = True
        for process in list(sandbox.running):
            process.kill_group()

    async def is_running(self, record: SandboxRecord) -> bool:
        """Whether the sandbox exists and was not destroyed."""
        sandbox = record.handle
        return isinstance(sandbox, _Sandbox) and not sandbox.destroyed and record.workspace.is_dir()

    # ----- commands

    def _command(self, sandbox: _Sandbox, record: SandboxRecord, spec: ExecSpec, cwd_file: str | None) -> tuple[list[str], dict[str, str], Path]:
        """The argv, environment and host cwd that run ``spec``."""
        if spec.shell is not None:
            script = f"cd -- {shlex.quote(spec.cwd)} || exit\n"
            if cwd_file is not None:
                # An EXIT trap reports the directory even when the script calls `exit`.
                script += f"trap {shlex.quote(f'pwd >{shlex.quote(cwd_file)}')} EXIT\n"
            inner = ["/bin/sh", "-c", script + spec.shell]
        else:
            assert spec.argv is not None
            inner = ["/bin/sh", "-c", _ARGV_LAUNCHER, "sh", spec.cwd, *spec.argv]
        env = {"LANG": "C.UTF-8", "TERM": "dumb"}
        if not sandbox.bwrap:
            env.update(
                PATH=os.environ.get("PATH") or SANDBOX_PATH,
                HOME=str(sandbox.tmp / "home"),
                TMPDIR=str(sandbox.tmp),
            )
            env.update(record.recipe.env)
            env.update(spec.env)
            return inner, env, record.workspace
        assert self.bwrap is not None
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if record.recipe.network:
            args.append("--share-net")
        args += ["--hostname", "sandbox", *self._static_args, "--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", str(sandbox.tmp), "/tmp"]
        args += ["--bind", str(sandbox.spill), record.spill_mount]
        args += ["--bind", str(record.workspace), record.workdir]
        args += ["--chdir", record.workdir, "--clearenv"]
        env.update(PATH=SANDBOX_PATH, HOME=SANDBOX_HOME, TMPDIR="/tmp")
        env.update(record.recipe.env)
        env.update(spec.env)
        for name, value in env.items():
            args += ["--setenv", name, value]
        return [*args, "--", *inner], {"PATH": SANDBOX_PATH}, sandbox.root

    async def exec(self, record: SandboxRecord, spec: ExecSpec) -> AsyncIterator[pb.ExecEvent]:
        """Run ``spec`` in its own process group; yield Started, Output..., Exited."""
        sandbox = record.handle
        if not isinstance(sandbox, _Sandbox) or sandbox.destroyed:
            raise SandboxNotFound(f"sandbox {record.sandbox_id} is gone")
        _validate(spec)
        exec_id = secrets.token_hex(8)
        cwd_host = sandbox.spill / f"exec-{exec_id}.cwd"
        report = spec.report_cwd and spec.shell is not None
        cwd_file = f"{record.spill_mount}/{cwd_host.name}" if report else None
        argv, env, host_cwd = self._command(sandbox, record, spec, cwd_file)
        cap = _OutputCap(spec.output_cap, sandbox.spill / f"exec-{exec_id}.log")
        process = _Process(argv, env, host_cwd, spec.stdin)
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
            if cwd_file is not None:
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
            with contextlib.suppress(OSError):
                cwd_host.unlink()
            if process.popen is not None and not finished:
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
        """Wait for the reaping of killed commands to finish."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
