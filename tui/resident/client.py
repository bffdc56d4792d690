"""The client side of the resident harness: hand a run over, start one, ask one how it is, stop it.

Standard library only: this runs at the start of every ``tether -p``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tui.resident import (
    SOCKET_GLOB,
    ResidentUnavailable,
    code_root,
    enabled,
    runtime_dir,
    socket_path,
)
from tui.resident.wire import WireError, read_message, send_request

START_TIMEOUT_S = 60.0
"""How long ``tether resident start`` waits for a new resident process to listen."""

STOP_TIMEOUT_S = 30.0
"""How long ``stop`` waits for a resident process to exit after SIGTERM."""

SCRUBBED_ENV_PREFIXES = ("ANTHROPIC_", "TETHER_SANDBOX_TOKEN")
"""The resident process never holds credentials: each run brings its own environment."""

Say = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


def _stderr(message: str) -> None:
    print(f"tether: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- running through it


def hand_over(argv: list[str], *, verbose: bool = False) -> int | None:
    """Run ``tether ARGV`` in a child of the resident process; None means: run it in-process.

    With no resident process yet, this run goes on in-process and one is
    started for later runs as it exits, so the resident process's imports
    never compete with this run's for the CPU.
    """
    say = _stderr if verbose else _quiet
    if not enabled():
        say("running in-process (TETHER_RESIDENT is off)")
        return None
    try:
        path = socket_path()
    except (ResidentUnavailable, OSError) as exc:
        say(f"running in-process: no resident harness can be used ({exc})")
        return None
    sock = _connect(path)
    if sock is None:
        lock = _try_lock(path)
        if lock is None:
            say("running in-process; a resident harness for later runs is starting")
            return None
        sock = _connect(path)  # it may have come up between the two looks
        if sock is None:
            say(f"running in-process; starting a resident harness for later runs ({path})")
            _start_at_exit(path, lock, say)
            return None
        os.close(lock)
    with sock:
        return _run(sock, path, argv, say)


def _run(sock: socket.socket, path: Path, argv: list[str], say: Say) -> int | None:
    resident = peer_pid(sock)
    try:
        send_request(sock, {"op": "run", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
        reader = sock.makefile("rb")
        first = read_message(reader)
    except (OSError, WireError):
        first = None
    if first is None or "pid" not in first:
        say(f"running in-process: the resident harness {resident} refused the run")
        return None  # it refused or died before forking: nothing ran
    child = int(first["pid"])
    say(f"running through the resident harness {resident} ({path}), as its child {child}")

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        last = read_message(reader)
    except (OSError, WireError):
        last = None
    if last is None or "exit" not in last:
        print("tether: the resident harness process went away mid-run", file=sys.stderr)
        return 1
    return int(last["exit"])


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a connected unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


# ---------------------------------------------------------------------------- starting one


def _lock_path(path: Path) -> Path:
    return path.with_suffix(".lock")


def _try_lock(path: Path) -> int | None:
    """The start lock of ``path``'s resident process, if nobody is starting it; the caller owns the fd."""
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _spawn(path: Path, lock: int, ready_fd: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m tui.resident serve`` on ``path``; it inherits the start lock and drops it once it listens."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a process that died: we hold the start lock
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root()), env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "tui.resident", "serve", str(path), "--lock-fd", str(lock)]
    fds = [lock]
    if ready_fd is not None:
        args += ["--ready-fd", str(ready_fd)]
        fds.append(ready_fd)
    with open(path.with_suffix(".log"), "ab") as log:
        return subprocess.Popen(
            args,
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd="/",
            start_new_session=True,
        )


def _start_at_exit(path: Path, lock: int, say: Say) -> None:
    """Start the resident process when this run exits: its answer is out, and the two never compete for the CPU."""

    def start() -> None:
        try:
            process = _spawn(path, lock)
            say(f"started the resident harness {process.pid} for later runs")
        except OSError as exc:
            say(f"could not start a resident harness: {exc}")
        finally:
            os.close(lock)

    atexit.register(start)


def start(*, timeout: float = START_TIMEOUT_S) -> int:
    """Make sure the resident process for this code listens (starting it if needed); return its pid."""
    path = socket_path()
    deadline = time.monotonic() + timeout
    while True:
        sock = _connect(path)
        if sock is not None:
            with sock:
                return peer_pid(sock)
        lock = _try_lock(path)
        if lock is None:
            # Someone is starting it: their resident process drops the lock once it listens (or dies).
            _wait_for_lock(path, deadline)
            continue
        read_end, write_end = os.pipe()
        try:
            process = _spawn(path, lock, write_end)
        finally:
            os.close(write_end)
            os.close(lock)
        with os.fdopen(read_end, "rb") as ready:
            selector = selectors.DefaultSelector()
            selector.register(ready, selectors.EVENT_READ)
            said = ready.readline().strip() if selector.select(max(deadline - time.monotonic(), 0)) else b""
        if said != b"ready":
            raise ResidentUnavailable(f"the resident harness did not start; see {path.with_suffix('.log')}")
        return process.pid


def _wait_for_lock(path: Path, deadline: float) -> None:
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # No timeout: the lock's holder is a starting resident process, which soon listens or dies (and so lets go).
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)
    if time.monotonic() > deadline:
        raise ResidentUnavailable("the resident harness did not start in time")


# ---------------------------------------------------------------------------- seeing and stopping them


@dataclass
class ResidentInfo:
    """One resident process of this user, as ``tether resident status`` shows it."""

    pid: int
    socket: Path
    version: str = ""
    """The code version its socket is named after."""
    root: str = ""
    """The checkout it runs."""
    python: str = ""
    """The interpreter that started it."""
    started: float = 0.0
    """When it started (Unix time)."""
    idle_s: float | None = None
    """Seconds since its last run ended (None: a run is going on, or it did not say)."""
    runs_served: int | None = None
    running: int | None = None
    """Runs going on now."""
    current: bool = False
    """Whether this ``tether`` would use it."""


def list_residents() -> list[ResidentInfo]:
    """Every resident process listening in this user's runtime dir, whichever interpreter started it."""
    directory = runtime_dir()
    try:
        mine = socket_path()
    except (ResidentUnavailable, OSError):
        mine = None
    found = []
    for path in sorted(directory.glob(SOCKET_GLOB)):
        sock = _connect(path)
        if sock is None:
            continue  # a stale socket: whoever starts the next one there removes it
        with sock:
            pid = peer_pid(sock)
            info = ResidentInfo(pid=pid, socket=path, current=path == mine, version=path.stem.removeprefix("harness-"))
            _ask_status(sock, info)
        found.append(info)
    return found


def _ask_status(sock: socket.socket, info: ResidentInfo) -> None:
    """Fill ``info`` from the process itself; one from an older tether may not answer: /proc then says what it can."""
    try:
        sock.settimeout(5.0)
        send_request(sock, {"op": "status"})
        answer = read_message(sock.makefile("rb"))
    except (OSError, WireError):
        answer = None
    if answer and answer.get("pid") == info.pid:
        info.root = str(answer.get("root", ""))
        info.python = str(answer.get("python", ""))
        info.started = float(answer.get("started", 0.0))
        info.idle_s = answer.get("idle_s")
        info.runs_served = answer.get("runs_served")
        info.running = answer.get("running")
        return
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
        info.python = argv[0].decode(errors="replace")
        info.root = "(an older tether)"
        info.started = Path(f"/proc/{info.pid}").stat().st_mtime


def stop(infos: list[ResidentInfo], *, timeout: float = STOP_TIMEOUT_S) -> list[int]:
    """SIGTERM each resident process (it ends its runs and its host) and wait until it has exited; return those still alive."""
    pidfds = {}
    for info in infos:
        try:
            pidfds[info.pid] = os.pidfd_open(info.pid)
            os.kill(info.pid, signal.SIGTERM)
        except ProcessLookupError:
            pidfds.pop(info.pid, None)
    deadline = time.monotonic() + timeout
    alive = []
    for pid, fd in pidfds.items():
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        if not selector.select(max(deadline - time.monotonic(), 0)):
            alive.append(pid)
        selector.close()
        os.close(fd)
    return alive
