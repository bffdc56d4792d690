"""Host loss, for real: a blackholed network, a host SIGKILLed and restarted, every host down, tether killed.

Real processes throughout: sandbox hosts are ``python -m remote_sandbox serve``
subprocesses on 127.0.0.1 (local provider, or docker), the network between
tether and a host is a TCP proxy written here that can be switched to swallow
everything, the harness is the real one (in-process, or the ``tether`` command)
and the model is the fake Messages API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import events as ev
from agent.harness import Harness, HarnessOptions
from agent.sandbox_client import KEEPALIVE_DETECT_S
from remote_sandbox.cli import READY_LINE_PREFIX
from tests.fixtures.event_recorder import Recorder
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.processes import wait_pids_gone
from tests.fixtures.sandbox_host import _read_line
from tests.fixtures.tether_cli import TetherEnv

WAIT_S = 40.0
"""Bound on every wait here."""

DETECT_BOUND_S = 10.0
"""The issue's promise: a silent host is noticed within this long."""


# ----------------------------------------------------------------------------- parts


def bash(command: str) -> Any:
    """A model turn that runs ``command``."""
    return reply(tool_use("Bash", {"command": command}))


def free_port() -> int:
    """A TCP port nothing listens on now (for a host that must come back on the same one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HostProcess:
    """``python -m remote_sandbox serve`` on a fixed 127.0.0.1 port, that a test can SIGKILL and start again."""

    def __init__(self, root: Path, name: str, token: str, provider: str = "local", image: str = "") -> None:
        """A host called ``name`` keeping its state under ``root``; not started yet."""
        self.port = free_port()
        self.target = f"grpc://127.0.0.1:{self.port}"
        self.state_dir = root / f"{name}-state"
        self.provider = provider
        self.image = image
        self.log = root / f"{name}.log"
        self.token_file = root / f"{name}-tokens"
        self.token_file.write_text(f"tenant-a {token}\n")
        self.token_file.chmod(0o600)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the host and wait for its listening line."""
        args = [
            sys.executable, "-m", "remote_sandbox", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--provider", self.provider,
            "--token-file", str(self.token_file),
            "--state-dir", str(self.state_dir),
            *(["--default-image", self.image] if self.image else []),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        line = _read_line(self.process, 30.0)
        if not line.startswith(READY_LINE_PREFIX):
            self.kill()
            raise RuntimeError(f"sandbox host did not start (said {line!r}):\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL the host and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()

    def stop(self) -> None:
        """Stop the host gracefully (it removes its sandboxes)."""
        process = self.process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def sandboxes(self) -> list[str]:
        """The sandbox directories the host keeps (the local provider's)."""
        root = self.state_dir / "sandboxes"
        return sorted(p.name for p in root.iterdir()) if root.exists() else []


@contextlib.contextmanager
def hosts(tmp_path: Path, *names: str, provider: str = "local", image: str = "") -> Iterator[list[HostProcess]]:
    """Started hosts sharing one token; stopped afterwards."""
    token = secrets.token_hex(16)
    made = [HostProcess(tmp_path, name, token, provider, image) for name in names]
    try:
        for host in made:
            host.start()
        yield made
    finally:
        for host in made:
            host.stop()


def host_token(host: HostProcess) -> str:
    """The token a host accepts."""
    return host.token_file.read_text().split()[1]


class BlackholeProxy:
    """A TCP proxy on 127.0.0.1 to a host; ``blackhole()`` makes it swallow every byte both ways, closing nothing."""

    def __init__(self, port: int) -> None:
        """Forward to 127.0.0.1:``port`` once started."""
        self.upstream = port
        self.dropping = False
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        """Listen; return the target tether should use."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"grpc://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        """From now on, nothing gets through (as a silent network)."""
        self.dropping = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dropping:
            await self._pipe(reader, None)
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        pumps = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pumps, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
        while data := await reader.read(65536):
            if self.dropping or writer is None:
                continue  # swallowed: the peer sees a connection that never answers
            writer.write(data)
            await writer.drain()
        if writer is not None and not self.dropping:
            writer.close()

    async def close(self) -> None:
        """Stop listening and end every connection."""
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()


async def started(options: HarnessOptions) -> tuple[Harness, Recorder]:
    """A started harness and its event recorder."""
    recorder = Recorder(wait_s=WAIT_S)
    harness = Harness(options, recorder)
    await harness.start()
    return harness, recorder


def host_events(harness: Harness) -> list[dict]:
    """The payloads of the session log's ``host`` events."""
    assert harness.log is not None
    return [e.payload for e in harness.log.events() if e.type == "host"]


# ----------------------------------------------------------------------------- 1. a silent network


async def test_a_blackholed_host_is_noticed_within_ten_seconds_and_failed_over(
    fake_api: FakeMessagesAPI, tui_env: Path, tmp_path: Path
) -> None:
    (tui_env / "seed.txt").write_text("seed\n")
    with hosts(tmp_path, "a", "b") as (a, b):
        proxy = BlackholeProxy(a.port)
        via_proxy = await proxy.start()
        harness, recorder = await started(
            HarnessOptions(
                project_dir=tui_env,
                sandbox=f"{via_proxy},{b.target}",
                sandbox_token=host_token(a),
                permission_mode="bypassPermissions",
            )
        )
        try:
            assert harness.host_label == via_proxy
            fake_api.script(
                bash("echo one > one.txt"),
                bash("echo long-started; sleep 60"),
                bash("cat one.txt seed.txt; echo on-b"),
                reply(text("done")),
            )
            run = asyncio.ensure_future(harness.run("work"))
            await recorder.wait_for(lambda e: isinstance(e, ev.ToolOutput) and "long-started" in e.text)
            silenced = time.monotonic()
            proxy.blackhole()
            noticed = await recorder.wait_for(lambda e: isinstance(e, ev.Status) and "lost" in e.message)
            detected = recorder.times[recorder.events.index(noticed)] - silenced
            assert detected <= DETECT_BOUND_S, f"the silent host was noticed after {detected:.1f} s"
            await asyncio.wait_for(run, WAIT_S)
            made, cut, after = recorder.results()[-3:]
            assert not made.is_error, made.content
            assert cut.is_error and f"moved to the sandbox host at {b.target}" in cut.content, cut.content
            assert "checkpoint" in cut.content
            assert not after.is_error, after.content
            assert after.content.split() == ["one", "seed", "on-b"]
            assert harness.host_label == b.target
            changes = host_events(harness)
            assert [c["event"] for c in changes] == ["failed over"], changes
            assert changes[0]["host"] == b.target and changes[0]["previous"] == via_proxy and changes[0]["reason"]
        finally:
            await harness.close()
            await proxy.close()
        assert detected < KEEPALIVE_DETECT_S + 1.0


# ----------------------------------------------------------------------------- 2. restarted ten times


@pytest.mark.docker
async def test_a_host_sigkilled_and_restarted_ten_times_loses_no_tool_call(
    fake_api: FakeMessagesAPI, tui_env: Path, tmp_path: Path, docker_engine, docker_test_image: str
) -> None:
    with hosts(tmp_path, "docker-host", provider="docker", image=docker_test_image) as (host,):
        harness, recorder = await started(
            HarnessOptions(
                project_dir=tui_env,
                sandbox=host.target,
                sandbox_token=host_token(host),
                permission_mode="bypassPermissions",
            )
        )
        seen: set[str] = set()
        try:
            for round_ in range(10):
                assert harness.lease is not None
                seen.add(harness.lease.sandbox_id)
                fake_api.script(bash(f"echo r{round_} > f{round_}.txt"), reply(text("made")))
                await harness.run(f"make {round_}")
                assert not recorder.results()[-1].is_error, recorder.results()[-1].content
                host.kill()
                host.start()
                fake_api.script(bash("cat f*.txt"), reply(text("seen")))
                await harness.run(f"look {round_}")
                after = recorder.results()[-1]
                assert not after.is_error, f"round {round_}: {after.content}"
                assert after.content.split() == [f"r{i}" for i in sorted(range(round_ + 1), key=str)], after.content
            seen.add(harness.lease.sandbox_id)
            changes = host_events(harness)
            assert len(changes) == 10 and all(c["event"] == "reconnected" for c in changes), changes
        finally:
            await harness.close()
    left = [
        c.labels.get("tether.sandbox")
        for c in docker_engine.containers.list(all=True, filters={"label": "tether.sandbox"})
        if c.labels.get("tether.sandbox") in seen
    ]
    assert left == [], f"containers left behind: {left}"


# ----------------------------------------------------------------------------- 3. every host down


async def test_every_host_down_is_a_clear_error_at_once_and_one_coming_back_carries_on(
    fake_api: FakeMessagesAPI, tui_env: Path, tmp_path: Path
) -> None:
    with hosts(tmp_path, "a", "b") as (a, b):
        harness, recorder = await started(
            HarnessOptions(
                project_dir=tui_env,
                sandbox=f"{a.target},{b.target}",
                sandbox_token=host_token(a),
                permission_mode="bypassPermissions",
            )
        )
        try:
            fake_api.script(bash("echo kept > kept.txt"), reply(text("made")))
            await harness.run("make")
            a.kill()
            b.kill()
            fake_api.script(bash("cat kept.txt"), reply(text("down")))
            began = time.monotonic()
            await asyncio.wait_for(harness.run("while down"), WAIT_S)
            down = recorder.results()[-1]
            took = time.monotonic() - began
            assert down.is_error and "The sandbox is unreachable: no sandbox host answers" in down.content
            assert a.target in down.content and b.target in down.content and "did not run" in down.content
            assert took < DETECT_BOUND_S, f"the error took {took:.1f} s"
            assert any(n.startswith("No sandbox host answers (attempt 1)") for n in recorder.notices())
            b.start()
            fake_api.script(bash("cat kept.txt"), reply(text("back")))
            await asyncio.wait_for(harness.run("after"), WAIT_S)
            back = recorder.results()[-1]
            assert not back.is_error and back.content.strip() == "kept", back.content
            assert harness.host_label == b.target
            assert host_events(harness)[-1]["event"] == "failed over"
        finally:
            await harness.close()


# ----------------------------------------------------------------------------- 4. tether killed twenty times


def test_tether_sigkilled_mid_tool_call_twenty_times_resumes_each_time(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, tmp_path: Path
) -> None:
    env = {**tether_env.env, "ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    with hosts(tmp_path, "host") as (host,), tether_zygote(tether_env.project, env) as fork:
        flags = [
            "--sandbox",
            host.target,
            "--sandbox-token",
            host_token(host),
            "--permission-mode",
            "bypassPermissions",
        ]
        session: list[str] = []
        killed: list[int] = []
        for round_ in range(20):
            fake_api.script(
                bash(f"ls f*.txt 2>/dev/null | tr '\\n' ' '; echo r{round_} > f{round_}.txt"),
                bash(f"touch started-{round_}; sleep 60"),
            )
            resume = ["-r", session[0]] if session else []
            stderr_path = tmp_path / f"tether-{round_}.err"
            pid = fork([*resume, "-p", f"round {round_}", *flags], stderr_path)
            try:
                marker = _wait_for_file(host, f"started-{round_}", pid)
                assert marker is not None, f"round {round_}: the long call never started:\n{stderr_path.read_text()}"
            finally:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                assert wait_pids_gone([pid], WAIT_S) == []
            if not session:
                session.append(tether_env.session_events()[0]["session_id"])
        fake_api.script(bash("cat f*.txt | tr '\\n' ' '"), reply(text("all there")))
        last = tether_env.run("-r", session[0], "-p", "check", "--output-format", "json", *flags, env=env)
        assert last.returncode == 0, last.stderr
        events = tether_env.session_events()
        results = [e["payload"]["content"] for e in events if e["type"] == "tool_result"]
        # Each round's first call saw every file of the rounds before it: from the sandbox that outlived
        # the killed run, or from the last checkpoint.
        listings = [sorted(r.split()) for r in results]
        for round_ in range(1, 20):
            expected = sorted(f"f{i}.txt" for i in range(round_))
            assert expected in listings, f"round {round_} did not see {expected}: {results}"
        final = results[-1]
        assert final.split() == [f"r{i}" for i in sorted(range(20), key=str)], final
        changes = [e["payload"] for e in events if e["type"] == "host"]
        assert len(changes) == 20 and all(c["event"] == "reconnected" and c["kept"] for c in changes), changes
        shown = tether_env.run("sessions", "show", session[0])
        assert shown.returncode == 0 and "*Sandbox host reconnected to " in shown.stdout, shown.stdout
        remaining = host.sandboxes()
    assert remaining == [], f"sandboxes outlived the session: {remaining}"
    assert wait_pids_gone(killed, 1.0) == []
    assert [pid for pid in _pids_with_arg(str(host.state_dir))] == [], "a sandbox host outlived the test"


@contextlib.contextmanager
def tether_zygote(project: Path, env: dict[str, str]) -> Iterator[Any]:
    """A function that starts ``tether ARGV`` as a forked process (see tests/fixtures/tether_zygote.py); its pid."""
    zygote = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.tether_zygote"],
        cwd=project,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert zygote.stdin is not None and zygote.stdout is not None
    try:
        assert zygote.stdout.readline().strip() == "ready"

        def fork(argv: list[str], stderr: Path) -> int:
            zygote.stdin.write(json.dumps({"argv": argv, "stderr": str(stderr)}) + "\n")  # type: ignore[union-attr]
            zygote.stdin.flush()  # type: ignore[union-attr]
            return int(zygote.stdout.readline())  # type: ignore[union-attr]

        yield fork
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=WAIT_S)
        zygote.stdout.close()


def _wait_for_file(host: HostProcess, name: str, pid: int) -> Path | None:
    """The file ``name`` in any sandbox workspace of ``host`` once it exists (bounded poll), else None."""
    deadline = time.monotonic() + WAIT_S
    root = host.state_dir / "sandboxes"
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        for found in root.glob(f"*/workspace/{name}") if root.exists() else []:
            return found
        time.sleep(0.02)  # a bounded poll of a file only the sandbox can make
    return None


def _pids_with_arg(arg: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                if arg.encode() in handle.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


# ----------------------------------------------------------------------------- between tool calls


async def test_the_heartbeat_finds_a_dead_host_between_calls_and_retries_until_it_is_back(
    fake_api: FakeMessagesAPI, tui_env: Path, tmp_path: Path
) -> None:
    with hosts(tmp_path, "a") as (a,):
        harness, recorder = await started(
            HarnessOptions(
                project_dir=tui_env,
                sandbox=a.target,
                sandbox_token=host_token(a),
                permission_mode="bypassPermissions",
                heartbeat_s=0.2,  # as the TUI's status bar watches, faster
            )
        )
        try:
            fake_api.script(bash("echo kept > kept.txt"), reply(text("made")))
            await harness.run("make")
            a.kill()
            # No tool call runs: the heartbeat notices, and every attempt is a notice of its own.
            for attempt in (1, 2):
                await recorder.wait_for(
                    lambda e, n=attempt: (
                        isinstance(e, ev.Status) and e.message.startswith(f"No sandbox host answers (attempt {n})")
                    )
                )
            a.start()
            await recorder.wait_for(lambda e: isinstance(e, ev.SandboxState) and e.state == "ready")
            fake_api.script(bash("cat kept.txt"), reply(text("back")))
            await asyncio.wait_for(harness.run("after"), WAIT_S)
            back = recorder.results()[-1]
            assert not back.is_error and back.content.strip() == "kept", back.content
            assert host_events(harness)[-1]["event"] == "reconnected"
        finally:
            await harness.close()
