"""The resident harness: a warm process that forks one child per ``tether -p`` run.

Importing the ``anthropic`` SDK costs 1.5-4 s on these machines, longer than a
whole one-answer run of other agents. So the first ``tether -p`` starts this
process, which imports everything once, keeps an embedded sandbox host
running, and listens on a private unix socket. Each later ``tether -p`` is a
thin client: it connects, hands over its stdin, stdout and stderr (as file
descriptors), its argv, working directory and environment, and the resident
process forks a child that runs exactly what ``tether -p`` runs in-process,
with that environment. The client forwards signals to the child and exits
with its exit code.

Forking is safe because this process never starts a thread or an event loop:
it only imports, accepts and forks. The socket's directory is 0700 and peers
must be the same user. The socket's name carries a hash of the code and of the
interpreter, so an upgrade starts a new resident process; an idle one exits on
its own. ``TETHER_RESIDENT=0`` turns it off.

This module's client half imports only the standard library.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

PROTOCOL = 1
IDLE_EXIT_S = 900.0
"""A resident process with no run for this long exits."""
SPAWN_TIMEOUT_S = 60.0
_ROOT = Path(__file__).resolve().parent.parent
_CODE_DIRS = ("agent", "session", "protos", "remote_sandbox")
_HEADER = struct.Struct("!I")


class ResidentUnavailable(Exception):
    """The resident process could not be reached or started; run in-process instead."""


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether ``tether -p`` should go through the resident process."""
    env = os.environ if environ is None else environ
    return env.get("TETHER_RESIDENT", "1") not in ("0", "false", "no", "off") and "TETHER_RESIDENT_CHILD" not in env


def runtime_dir() -> Path:
    """A private (0700, ours) directory for the socket: ``TETHER_RUNTIME_DIR``, the XDG runtime dir, or /tmp."""
    base = os.environ.get("TETHER_RUNTIME_DIR")
    if base:
        path = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "tether"
    else:
        path = Path("/tmp") / f"tether-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ResidentUnavailable(f"{path} is not private to this user (mode {oct(info.st_mode & 0o777)})")
    return path


def code_version() -> str:
    """A hash of the code this process would run: file names, sizes and mtimes, and the interpreter."""
    digest = hashlib.sha256(f"{PROTOCOL}\0{sys.executable}\0{sys.version}".encode())
    paths = [_ROOT / "tui" / "cli.py"]
    for name in _CODE_DIRS:
        paths.extend(sorted((_ROOT / name).rglob("*.py")))
    sdk = _package_dir("anthropic")
    if sdk is not None:
        paths.append(sdk)
    for path in paths:
        with contextlib.suppress(OSError):
            info = path.stat()
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def _package_dir(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def socket_path() -> Path:
    """Where the resident process for this code listens."""
    return runtime_dir() / f"harness-{code_version()}.sock"


# ---------------------------------------------------------------------------- client


def run_through_resident(argv: list[str]) -> int | None:
    """Run ``tether ARGV`` in a child of the resident process; None if it cannot be had."""
    try:
        path = socket_path()
        sock = _connect(path) or _spawn_and_connect(path)
    except (ResidentUnavailable, OSError):
        return None
    with sock:
        request = json.dumps({"v": PROTOCOL, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        try:
            socket.send_fds(sock, [_HEADER.pack(len(request)) + request], [0, 1, 2])
        except OSError:
            return None
        reader = sock.makefile("rb")
        first = _read_message(reader)
        if first is None or "pid" not in first:
            return None  # the resident process refused or died before forking: nothing ran
        child = int(first["pid"])

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        last = _read_message(reader)
        if last is None or "exit" not in last:
            print("tether: the resident harness process went away mid-run", file=sys.stderr)
            return 1
        return int(last["exit"])


def _read_message(reader) -> dict | None:
    while True:
        try:
            line = reader.readline()
        except InterruptedError:
            continue
        if not line:
            return None
        return json.loads(line)


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _spawn_and_connect(path: Path) -> socket.socket:
    lock_path = path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)  # another client may have started it while we waited
        if sock is not None:
            return sock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a process that died
        read_end, write_end = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "TETHER_SANDBOX_TOKEN"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        log = open(path.with_suffix(".log"), "ab")
        try:
            subprocess.Popen(
                [sys.executable, "-m", "agent.resident", "serve", str(path), str(write_end)],
                pass_fds=(write_end,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        finally:
            os.close(write_end)
            log.close()
        with os.fdopen(read_end, "rb") as ready:
            selector = selectors.DefaultSelector()
            selector.register(ready, selectors.EVENT_READ)
            if not selector.select(SPAWN_TIMEOUT_S) or ready.readline().strip() != b"ready":
                raise ResidentUnavailable(f"the resident harness did not start; see {path.with_suffix('.log')}")
        sock = _connect(path)
        if sock is None:
            raise ResidentUnavailable("the resident harness started but does not accept connections")
        return sock


# ---------------------------------------------------------------------------- server


def serve(path: Path, ready_fd: int) -> int:
    """Import everything, start the shared embedded sandbox host, then accept and fork until idle."""
    import anthropic  # noqa: F401  the reason this process exists

    import agent.headless  # noqa: F401
    import tui.cli  # noqa: F401
    from agent.embedded_host import EmbeddedHost

    warm_up()
    # It serves every project's direct workspace: it may mount any directory. Only this user can
    # reach it (a private socket and a one-time token), and the harness refuses to mount a
    # directory that holds the home directory or the session store.
    host = EmbeddedHost(workspace_roots=[Path("/")])
    target, token = host.start_blocking()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    print(f"resident harness {os.getpid()} listening on {path}", file=sys.stderr, flush=True)

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, ("accept", None))
    runs: dict[int, tuple[socket.socket, int]] = {}  # pidfd -> (client connection, pid)
    idle_since = time.monotonic()
    try:
        while True:
            if not runs and time.monotonic() - idle_since >= IDLE_EXIT_S:
                return 0
            for key, _ in selector.select(timeout=60.0):
                kind, data = key.data
                if kind == "accept":
                    conn, _ = listener.accept()
                    started = _start_run(conn, listener, selector, runs, host, target, token)
                    if started is not None:
                        selector.register(started, selectors.EVENT_READ, ("exit", started))
                        selector.register(conn, selectors.EVENT_READ, ("client", started))
                elif kind == "exit":
                    conn, pid = runs.pop(data)
                    _, status = os.waitpid(pid, 0)
                    code = os.waitstatus_to_exitcode(status)
                    for fd_or_sock in (data, conn):
                        with contextlib.suppress(KeyError):  # a client that went away is unregistered already
                            selector.unregister(fd_or_sock)
                    os.close(data)
                    # Killed by a signal, the child could not destroy its sandbox on the shared
                    # host: a cleaner does, and the client hears the exit once it is done.
                    cleaner = _destroy_sandboxes_of(pid, target, token) if code < 0 else None
                    if cleaner is not None:
                        selector.register(cleaner, selectors.EVENT_READ, ("cleaner", (cleaner, conn, code)))
                    else:
                        _report_exit(conn, code)
                    idle_since = time.monotonic()
                elif kind == "cleaner":
                    cleaner, conn, code = data
                    selector.unregister(cleaner)
                    with contextlib.suppress(ChildProcessError):
                        os.waitid(os.P_PIDFD, cleaner, os.WEXITED)
                    os.close(cleaner)
                    _report_exit(conn, code)
                elif kind == "client":
                    # The client only ever sends once; readable now means it went away.
                    if data in runs and not key.fileobj.recv(1, socket.MSG_PEEK):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(runs[data][1], signal.SIGTERM)
                        selector.unregister(key.fileobj)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        host.stop_blocking()


_WARM_UP_STREAM = b"".join(
    b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())
    for name, data in [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_warmup", "type": "message", "role": "assistant", "model": "warm-up", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_warmup", "name": "Bash", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
            "type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    ]
)  # fmt: skip


def warm_up() -> None:
    """Stream one canned answer through the SDK over an in-memory transport.

    The SDK builds its stream types and imports its tracing and HTTP layers
    lazily, on the first request: about 0.5 s that every forked child would
    otherwise pay again. No socket is opened, and ``asyncio.run`` joins every
    thread it started, so the process is still safe to fork afterwards.
    """
    import asyncio

    import anthropic
    import httpx2

    from agent.model import DEFAULT_MODEL, prepare_ssl_context

    def answer(_request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=_WARM_UP_STREAM)

    async def one_answer() -> None:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
        client = anthropic.AsyncAnthropic(api_key="warm-up", base_url="http://warm-up.invalid", http_client=http)
        async with client.messages.stream(
            model=DEFAULT_MODEL, max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for _event in stream:
                pass
            await stream.get_final_message()
        await client.close()

    asyncio.run(one_answer())
    prepare_ssl_context()


def _report_exit(conn: socket.socket, code: int) -> None:
    """Tell the client how its run ended (a signal as 128 + its number, as shells do) and hang up."""
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"exit": 128 - code if code < 0 else code % 256}).encode() + b"\n")
    conn.close()


RUN_LABEL = "tether.run"
"""Label on sandboxes a resident child provisions on the shared host: its pid."""


def _destroy_sandboxes_of(pid: int, target: str, token: str) -> int | None:
    """Fork a cleaner that destroys the shared host's sandboxes labelled with run ``pid``; return its pidfd."""
    cleaner = os.fork()
    if cleaner == 0:
        code = 1
        try:
            import asyncio

            from agent.sandbox_client import SandboxClient

            async def destroy() -> None:
                async with SandboxClient(target, token) as client:
                    for info in await client.list():
                        if info.recipe.labels.get(RUN_LABEL) == str(pid):
                            await client.destroy(info.sandbox_id)

            asyncio.run(destroy())
            code = 0
        except BaseException:  # noqa: BLE001 - the cleaner must never return into the server loop
            import traceback

            traceback.print_exc()
        os._exit(code)
    try:
        return os.pidfd_open(cleaner)
    except OSError:
        return None


def _start_run(conn, listener, selector, runs, host, target: str, token: str) -> int | None:
    """Read one request and fork its child; returns the child's pidfd, or None if refused."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        conn.close()
        return None
    try:
        conn.settimeout(10.0)
        head, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        (length,) = _HEADER.unpack(head[: _HEADER.size])
        body = head[_HEADER.size :]
        while len(body) < length:
            more = conn.recv(length - len(body))
            if not more:
                raise ConnectionError("request cut short")
            body += more
        request = json.loads(body)
        if request.get("v") != PROTOCOL or len(fds) != 3:
            raise ValueError("protocol mismatch")
        conn.settimeout(None)
    except (OSError, ValueError, struct.error) as exc:
        print(f"resident harness: bad request: {exc}", file=sys.stderr, flush=True)
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:  # the child: becomes `tether ARGV` for the client
        try:
            code = _child(request, fds, [listener, conn, *(c for c, _ in runs.values())], host, target, token)
        except BaseException:  # noqa: BLE001 - a child must never return into the server loop
            import traceback

            traceback.print_exc()
            code = 1
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    runs[pidfd] = (conn, pid)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pidfd


def _child(request: dict, fds: list[int], inherited: list[socket.socket], host, target: str, token: str) -> int:
    import io
    import random

    for sock in inherited:
        sock.close()
    host.forget_in_child()
    for target_fd, fd in enumerate(fds):
        os.dup2(fd, target_fd)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "rb", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "wb", closefd=False), line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "wb", closefd=False), line_buffering=True)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    random.seed()
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["TETHER_RESIDENT_CHILD"] = "1"
    os.environ["TETHER_SHARED_HOST"] = target
    os.environ["TETHER_SHARED_HOST_TOKEN"] = token
    os.chdir(request["cwd"])
    from tui.cli import main

    try:
        return int(main(list(request["argv"])) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def stop(path: Path | None = None) -> bool:
    """Ask the resident process for this code to exit (SIGTERM by its socket's peer pid); False if none runs."""
    path = path or socket_path()
    sock = _connect(path)
    if sock is None:
        return False
    with sock:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
    os.kill(pid, signal.SIGTERM)
    return True


def main(argv: list[str]) -> int:
    """``python -m agent.resident serve PATH READY_FD`` (started by a client) or ``stop``."""
    if argv[:1] == ["serve"] and len(argv) == 3:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return serve(Path(argv[1]), int(argv[2]))
    if argv[:1] == ["stop"]:
        return 0 if stop() else 1
    print("usage: python -m agent.resident serve PATH READY_FD | stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
