"""The embedded sandbox host: a real child process on a private unix socket, and how it ends."""

from __future__ import annotations

import asyncio
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.embedded_host import READY_LINE_PREFIX, EmbeddedHost, EmbeddedHostError
from agent.sandbox_client import SandboxAuthError, SandboxClient
from protos.recipes import load_recipe
from remote_sandbox import cli
from tests.fixtures.processes import wait_pids_gone

WAIT_S = 20.0
"""Bound on every wait for a process to end."""


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` exits within ``timeout`` (works for non-children too)."""
    return not wait_pids_gone([pid], timeout)


def test_ready_line_matches_the_host_cli() -> None:
    assert READY_LINE_PREFIX == cli.READY_LINE_PREFIX


async def test_start_use_stop(tmp_path: Path) -> None:
    host = EmbeddedHost(state_root=tmp_path / "states")
    target, token = await host.start()
    assert host.process is not None
    pid = host.process.pid
    assert target.startswith("unix:///")
    socket_path = Path(target.removeprefix("unix://"))
    assert socket_path.exists()
    runtime_dir = socket_path.parent
    assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((runtime_dir / "token").stat().st_mode) == 0o600
    async with SandboxClient(target, token) as client:
        await client.wait_ready()
        info = await client.provision(load_recipe(None))
        assert (await client.exec(info.sandbox_id, shell="echo embedded")).stdout == b"embedded\n"
    async with SandboxClient(target, "guessed-token-guessed-token") as intruder:
        with pytest.raises(SandboxAuthError):
            await intruder.wait_ready(timeout=5)

    await host.stop()

    assert host.process is None
    assert await asyncio.to_thread(wait_pid_gone, pid, WAIT_S)
    assert not runtime_dir.exists()
    assert list((tmp_path / "states").iterdir()) == []


async def test_child_gets_no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-must-not-travel")
    async with EmbeddedHost(state_root=tmp_path / "states") as host:
        assert host.process is not None
        environ = Path(f"/proc/{host.process.pid}/environ").read_bytes()
        assert b"sk-must-not-travel" not in environ
        assert b"ANTHROPIC_API_KEY" not in environ


async def test_child_exits_when_its_stdin_closes(tmp_path: Path) -> None:
    host = EmbeddedHost(state_root=tmp_path / "states")
    target, token = await host.start()
    assert host.process is not None and host.process.stdin is not None
    async with SandboxClient(target, token) as client:
        await client.provision(load_recipe(None))
    assert host.state_dir is not None
    sandboxes = host.state_dir / "sandboxes"
    assert len(list(sandboxes.iterdir())) == 1

    host.process.stdin.close()
    code = await asyncio.wait_for(host.process.wait(), WAIT_S)

    assert code == 0
    assert not sandboxes.exists(), "the child destroys its sandboxes and its state dir on the way out"
    assert host.runtime_dir is not None and not host.runtime_dir.exists()
    await host.stop()


def test_child_exits_when_the_parent_is_killed(tmp_path: Path) -> None:
    parent_script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from agent.embedded_host import EmbeddedHost

        async def main():
            host = EmbeddedHost(state_root=Path({str(tmp_path / "states")!r}))
            await host.start()
            print(host.process.pid, host.runtime_dir, host.state_dir, flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], WAIT_S)
        assert ready, "the parent did not report its child in time"
        line = parent.stdout.readline().decode()
        assert line.split(" ")[0].isdigit(), parent.stderr.read() if parent.stderr else line
        child, runtime_dir, state_dir = int(line.split()[0]), Path(line.split()[1]), Path(line.split()[2])
        assert not wait_pid_gone(child, 0), "the child should be running"
        assert runtime_dir.is_dir() and state_dir.is_dir()

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=WAIT_S)

        assert wait_pid_gone(child, WAIT_S), "the embedded host outlived its SIGKILLed parent"
        assert not runtime_dir.exists(), "the socket, token and log of a killed parent's host stay behind"
        assert not state_dir.exists(), "the sandboxes of a killed parent's host stay behind"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


async def test_a_host_that_cannot_start_says_why(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'cannot import remote_sandbox: broken install' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    host = EmbeddedHost(python=str(fake_python), state_root=tmp_path / "states")
    started = time.monotonic()
    with pytest.raises(EmbeddedHostError, match="broken install") as caught:
        await host.start()
    assert "exit code 3" in str(caught.value)
    assert time.monotonic() - started < WAIT_S
    assert host.process is None
    assert host.runtime_dir is None


async def test_a_host_that_hangs_at_start_is_given_up_on(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'starting...' >&2\nexec sleep 1000\n")
    fake_python.chmod(0o755)
    host = EmbeddedHost(python=str(fake_python), state_root=tmp_path / "states", start_timeout=1.0)
    with pytest.raises(EmbeddedHostError, match="did not start within 1 s"):
        await host.start()
    assert host.process is None
