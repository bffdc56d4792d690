"""The resident process itself: import everything, start the shared sandbox host, accept and fork.

See the package's docstring for why it exists and why forking is safe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.embedded_host import EmbeddedHost, SharedHost
from tui.resident import IDLE_EXIT_S, code_root, code_version
from tui.resident.wire import WireError, receive_request, send_message

STOP_RUNS_GRACE_S = 10.0
"""On SIGTERM, how long running children get to end after being told to, before they are killed."""


@dataclass
class Resident:
    """The state of the resident process's accept loop."""

    socket_path: Path
    host: EmbeddedHost
    shared: SharedHost
    listener: socket.socket
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    runs: dict[int, tuple[socket.socket, int]] = field(default_factory=dict)
    """pidfd → (client connection, child pid), for every run going on."""
    started: float = field(default_factory=time.time)
    idle_since: float = field(default_factory=time.monotonic)
    runs_served: int = 0
    version: str = field(default_factory=code_version)

    def describe(self) -> dict:
        """What ``tether resident status`` shows of this process."""
        return {
            "pid": os.getpid(),
            "socket": str(self.socket_path),
            "version": self.version,
            "root": str(code_root()),
            "python": sys.executable,
            "started": self.started,
            "idle_s": None if self.runs else round(time.monotonic() - self.idle_since, 1),
            "runs_served": self.runs_served,
            "running": len(self.runs),
        }


def serve(path: Path, lock_fd: int, ready_fd: int | None) -> int:
    """Import everything, start the shared embedded sandbox host, then accept and fork until idle or told to stop."""
    import anthropic  # noqa: F401  the reason this process exists

    import agent.headless  # noqa: F401
    import tui.cli  # noqa: F401

    warm_up()
    # It serves every project's direct workspace: it may mount any directory. Only this user can
    # reach it (a private socket and a one-time token), and the harness refuses to mount a
    # directory that holds the home directory or the session store.
    host = EmbeddedHost(workspace_roots=[Path("/")])
    target, token = host.start_blocking()
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # we hold the start lock: whatever is there is stale
        listener.bind(str(path))
        os.chmod(path, 0o600)
        bound = path.stat().st_ino
        listener.listen(64)
    except BaseException:
        host.stop_blocking(grace=0.0)
        raise
    os.close(lock_fd)  # listening: the next client connects instead of starting another
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    print(f"resident harness {os.getpid()} listening on {path}", file=sys.stderr, flush=True)
    state = Resident(socket_path=path, host=host, shared=SharedHost(target, token), listener=listener)
    try:
        return _accept_until_idle(state)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == bound:  # not a successor's socket
                path.unlink()
        listener.close()
        _end_runs(state)
        host.stop_blocking()


def _accept_until_idle(state: Resident) -> int:
    selector, runs = state.selector, state.runs
    selector.register(state.listener, selectors.EVENT_READ, ("accept", None))
    while True:
        if not runs and time.monotonic() - state.idle_since >= IDLE_EXIT_S:
            return 0
        for key, _ in selector.select(timeout=60.0):
            kind, data = key.data
            if kind == "accept":
                conn, _ = state.listener.accept()
                started = _serve_request(conn, state)
                if started is not None:
                    selector.register(started, selectors.EVENT_READ, ("exit", started))
                    selector.register(conn, selectors.EVENT_READ, ("client", started))
            elif kind == "exit":
                _reap(state, data)
            elif kind == "cleaner":
                cleaner, conn, code = data
                selector.unregister(cleaner)
                with contextlib.suppress(ChildProcessError):
                    os.waitid(os.P_PIDFD, cleaner, os.WEXITED)
                os.close(cleaner)
                _report_exit(conn, code)
            elif kind == "client" and data in runs and not key.fileobj.recv(1, socket.MSG_PEEK):
                # The client only ever sends once; readable now means it went away.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(runs[data][1], signal.SIGTERM)
                selector.unregister(key.fileobj)


def _reap(state: Resident, pidfd: int) -> None:
    """A run's child exited: collect it and tell its client (after destroying its sandbox if it was killed)."""
    conn, pid = state.runs.pop(pidfd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    for fd_or_sock in (pidfd, conn):
        with contextlib.suppress(KeyError, ValueError):  # a client that went away is unregistered already
            state.selector.unregister(fd_or_sock)
    os.close(pidfd)
    # Killed by a signal, the child could not destroy its sandbox on the shared
    # host: a cleaner does, and the client hears the exit once it is done.
    cleaner = _destroy_sandboxes_of(pid, state.shared.target, state.shared.token) if code < 0 else None
    if cleaner is not None:
        state.selector.register(cleaner, selectors.EVENT_READ, ("cleaner", (cleaner, conn, code)))
    else:
        _report_exit(conn, code)
    state.idle_since = time.monotonic()


def _end_runs(state: Resident) -> None:
    """Told to stop: end the runs going on (SIGTERM, then SIGKILL after a grace) and tell their clients."""
    for _conn, pid in state.runs.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_RUNS_GRACE_S
    for pidfd in list(state.runs):
        conn, pid = state.runs.pop(pidfd)
        waiter = selectors.DefaultSelector()
        waiter.register(pidfd, selectors.EVENT_READ)
        if not waiter.select(max(deadline - time.monotonic(), 0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        waiter.close()
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        _report_exit(conn, os.waitstatus_to_exitcode(status))


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
        send_message(conn, {"exit": 128 - code if code < 0 else code % 256})
    conn.close()


def _destroy_sandboxes_of(pid: int, target: str, token: str) -> int | None:
    """Fork a cleaner that destroys the shared host's sandboxes labelled with run ``pid``; return its pidfd."""
    cleaner = os.fork()
    if cleaner == 0:
        code = 1
        try:
            import asyncio

            from agent.lease import RUN_LABEL
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


def _serve_request(conn: socket.socket, state: Resident) -> int | None:
    """Read one request: answer a status, or fork a run's child and return its pidfd (None if refused)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        conn.close()
        return None
    fds: list[int] = []
    try:
        conn.settimeout(10.0)
        request, fds = receive_request(conn)
        op = request.get("op")
        if op == "status":
            send_message(conn, state.describe())
            conn.close()
            return None
        if op != "run" or len(fds) != 3:
            raise WireError(f"unknown request {op!r} with {len(fds)} descriptors")
        conn.settimeout(None)
    except (OSError, ValueError, WireError, EOFError) as exc:
        if not isinstance(exc, EOFError):
            print(f"resident harness: bad request: {exc}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    runs = state.runs
    pid = os.fork()
    if pid == 0:  # the child: becomes `tether ARGV` for the client
        try:
            inherited = [state.listener, conn, *(c for c, _ in runs.values())]
            code = _child(request, fds, inherited, state.host, state.shared)
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
    state.runs_served += 1
    send_message(conn, {"pid": pid})
    return pidfd


def _child(
    request: dict, fds: list[int], inherited: list[socket.socket], host: EmbeddedHost, shared: SharedHost
) -> int:
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
    os.chdir(request["cwd"])
    from tui.cli import main

    try:
        return int(main(list(request["argv"]), shared_host=shared) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def main(argv: list[str]) -> int:
    """``python -m tui.resident serve PATH --lock-fd N [--ready-fd N]``, as a client starts it."""
    parser = argparse.ArgumentParser(prog="python -m tui.resident")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("socket", type=Path)
    parser.add_argument("--lock-fd", type=int, required=True, help="the start lock, held until listening")
    parser.add_argument("--ready-fd", type=int, default=None, help="where to write 'ready' once listening")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return serve(args.socket, args.lock_fd, args.ready_fd)
