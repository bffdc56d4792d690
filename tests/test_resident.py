"""The resident harness: later `tether -p` runs are forked from a warm process and behave the same."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.fake_api import FakeMessagesAPI, error, hang, reply, text
from tests.fixtures.tether_cli import TETHER, TetherEnv


def _resident_pid(runtime: Path) -> int | None:
    sockets = list(runtime.glob("harness-*.sock"))
    if not sockets:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(sockets[0]))
        except ConnectionRefusedError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


@pytest.fixture
def resident(tether_env: TetherEnv, tmp_path: Path) -> Iterator[Path]:
    """Turn the resident harness on for tether_env, in a private runtime dir; stop it afterwards."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    tether_env.env.update(TETHER_RESIDENT="1", TETHER_RUNTIME_DIR=str(runtime))
    yield runtime
    pid = _resident_pid(runtime)
    if pid is not None:
        pidfd = os.pidfd_open(pid)
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], 30)
        os.close(pidfd)
        assert ready, "the resident harness did not exit on SIGTERM"


def test_runs_go_through_one_warm_process(fake_api: FakeMessagesAPI, tether_env: TetherEnv, resident: Path, tmp_path: Path) -> None:
    fake_api.script(reply(text("first")), reply(text("second")))
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    first = tether_env.run("-p", "one", "--output-format", "json", env=env)
    assert first.returncode == 0, first.stderr
    pid = _resident_pid(resident)
    assert pid is not None, "no resident harness is listening after the first run"

    other_home = tmp_path / "other-home"
    second = tether_env.run("-p", "two", "--output-format", "json", env={**env, "TETHER_HOME": str(other_home), "ANTHROPIC_API_KEY": "sk-other"})
    assert second.returncode == 0, second.stderr
    assert _resident_pid(resident) == pid, "the second run started another resident process"
    assert json.loads(first.stdout)["result"] == "first"
    assert json.loads(second.stdout)["result"] == "second"
    # Each run used its own environment: its key, its TETHER_HOME.
    assert [r.api_key for r in fake_api.message_requests] == ["sk-test", "sk-other"]
    assert len(tether_env.session_files()) == 1
    assert len(list(other_home.rglob("*.jsonl"))) == 1
    # ...and its own working directory: the session belongs to the project dir.
    meta = json.loads(tether_env.session_files()[0].read_text().splitlines()[0])
    assert meta["payload"]["project_dir"] == str(tether_env.project.resolve())


def test_exit_code_stdin_and_errors_pass_through(fake_api: FakeMessagesAPI, tether_env: TetherEnv, resident: Path) -> None:
    fake_api.script(
        lambda body: reply(text("you said: " + body["messages"][0]["content"][0]["text"])),
        error(400, "invalid_request_error", "bad request for the test"),
    )
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    ok = tether_env.run("-p", "-", input="from stdin", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "you said: from stdin\n"
    failed = tether_env.run("-p", "x", env=env)
    assert failed.returncode == 1
    assert "bad request for the test" in failed.stderr


def test_sigint_reaches_the_run(fake_api: FakeMessagesAPI, tether_env: TetherEnv, resident: Path) -> None:
    env = {**tether_env.env, "ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    fake_api.script(reply(text("warm")))
    assert tether_env.run("-p", "warm up", env=env).returncode == 0
    import threading

    stalled = hang(reply(text("never finishes " * 20)), after_events=4, release=threading.Event())
    fake_api.script(stalled)
    proc = subprocess.Popen([*TETHER, "-p", "hang", "--output-format", "json"], cwd=tether_env.project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert stalled.reached.wait(60), "the model stream never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        stalled.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    result = json.loads(out)
    assert result["is_error"] is True and result["stop_reason"] == "interrupted"


def test_an_unusable_runtime_dir_falls_back_to_in_process(fake_api: FakeMessagesAPI, tether_env: TetherEnv, tmp_path: Path) -> None:
    shared = tmp_path / "shared-runtime"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # not private: the resident harness must not use it
    tether_env.env.update(TETHER_RESIDENT="1", TETHER_RUNTIME_DIR=str(shared))
    fake_api.script(reply(text("still works")))
    proc = tether_env.run("-p", "x", env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "still works\n"
    assert list(shared.iterdir()) == []


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def test_a_killed_run_has_its_sandbox_destroyed_before_the_client_exits(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, resident: Path, tmp_path: Path
) -> None:
    import threading

    env = {**tether_env.env, "ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    fake_api.script(reply(text("warm")))
    assert tether_env.run("-p", "warm up", env=env).returncode == 0
    daemon = _resident_pid(resident)
    assert daemon is not None
    state = Path(env["XDG_STATE_HOME"]) / "tether" / "sandbox-host" / "embedded"

    def live_sandboxes() -> list[Path]:
        return [p for p in state.glob("*/sandboxes/*") if p.is_dir()]

    assert live_sandboxes() == [], "a finished run should have destroyed its sandbox"
    stalled = hang(reply(text("never " * 20)), after_events=3, release=threading.Event())
    fake_api.script(stalled)
    proc = subprocess.Popen([*TETHER, "-p", "hang"], cwd=tether_env.project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert stalled.reached.wait(60)
        assert len(live_sandboxes()) == 1
        runs = [pid for pid, cmd in _children(daemon) if "agent.resident" in cmd]
        assert len(runs) == 1, _children(daemon)
        os.kill(runs[0], signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        stalled.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL
    assert live_sandboxes() == []
    # The resident harness is still there and still works.
    fake_api.script(reply(text("still here")))
    again = tether_env.run("-p", "again", env=env)
    assert again.returncode == 0 and again.stdout == "still here\n"
    assert _resident_pid(resident) == daemon
