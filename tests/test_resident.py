"""The resident harness: later `tether -p` runs are forked from a warm process and behave the same."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.fake_api import FakeMessagesAPI, error, hang, reply, text
from tests.fixtures.tether_cli import ROOT, TETHER, TetherEnv


def _listening_pid(path: Path) -> int | None:
    """The pid of the process listening on unix socket ``path``, if one does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _resident_pid(runtime: Path) -> int | None:
    """The pid of the resident harness listening in ``runtime`` (there must be at most one)."""
    sockets = list(runtime.glob("harness-*.sock"))
    assert len(sockets) <= 1, sockets
    return _listening_pid(sockets[0]) if sockets else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for_starts(runtime: Path) -> None:
    """Wait until no resident harness in ``runtime`` is starting: a starting one holds its start lock."""
    for lock in runtime.glob("harness-*.lock"):
        with open(lock, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)


def _residents_started(tether_env: TetherEnv, runtime: Path) -> int:
    """``tether resident start``: wait for the resident harness the first run began starting; its pid."""
    started = tether_env.run("resident", "start")
    assert started.returncode == 0, started.stderr
    pid = _resident_pid(runtime)
    assert pid is not None and f"resident harness {pid} listening" in started.stdout, started.stdout
    return pid


@pytest.fixture
def resident(tether_env: TetherEnv, tmp_path: Path) -> Iterator[Path]:
    """Turn the resident harness on for tether_env, in a private runtime dir; stop them all afterwards."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    tether_env.env.update(TETHER_RESIDENT="1", TETHER_RUNTIME_DIR=str(runtime))
    yield runtime
    _wait_for_starts(runtime)
    pids = [pid for pid in map(_listening_pid, runtime.glob("harness-*.sock")) if pid]
    stopped = tether_env.run("resident", "stop", "--all")
    assert stopped.returncode == 0, stopped.stderr
    assert not [pid for pid in pids if _alive(pid)], "a resident harness survived `tether resident stop --all`"


def test_runs_go_through_one_warm_process(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, resident: Path, tmp_path: Path
) -> None:
    fake_api.script(reply(text("first")), reply(text("second")))
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    first = tether_env.run("-p", "one", "--output-format", "json", env=env)
    assert first.returncode == 0, first.stderr
    pid = _residents_started(tether_env, resident)

    other_home = tmp_path / "other-home"
    second = tether_env.run(
        "-p",
        "two",
        "--output-format",
        "json",
        env={**env, "TETHER_HOME": str(other_home), "ANTHROPIC_API_KEY": "sk-other"},
    )
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


def test_exit_code_stdin_and_errors_pass_through(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, resident: Path
) -> None:
    fake_api.script(
        lambda body: reply(text("you said: " + body["messages"][0]["content"][0]["text"])),
        error(400, "invalid_request_error", "bad request for the test"),
    )
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    _residents_started(tether_env, resident)
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
    _residents_started(tether_env, resident)
    import threading

    stalled = hang(reply(text("never finishes " * 20)), after_events=4, release=threading.Event())
    fake_api.script(stalled)
    proc = subprocess.Popen(
        [*TETHER, "-p", "hang", "--output-format", "json"],
        cwd=tether_env.project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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


def test_an_unusable_runtime_dir_falls_back_to_in_process(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, tmp_path: Path
) -> None:
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
    daemon = _residents_started(tether_env, resident)
    state = Path(env["XDG_STATE_HOME"]) / "tether" / "sandbox-host" / "embedded"

    def live_sandboxes() -> list[Path]:
        return [p for p in state.glob("*/sandboxes/*") if p.is_dir()]

    assert live_sandboxes() == [], "a finished run should have destroyed its sandbox"
    stalled = hang(reply(text("never " * 20)), after_events=3, release=threading.Event())
    fake_api.script(stalled)
    proc = subprocess.Popen(
        [*TETHER, "-p", "hang"],
        cwd=tether_env.project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert stalled.reached.wait(60)
        assert len(live_sandboxes()) == 1
        runs = [pid for pid, cmd in _children(daemon) if "tui.resident" in cmd]
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


# ----- seeing and stopping resident processes


def _spellings(tmp_path: Path) -> list[str]:
    """Ways to name this one interpreter: as pytest runs it, ``python3`` beside it, and through a symlinked prefix."""
    exe = Path(sys.executable)
    spellings = [str(exe)]
    sibling = exe.with_name("python3" if exe.name != "python3" else "python")
    if sibling.exists():
        spellings.append(str(sibling))
    link = tmp_path / "prefix-link"
    link.symlink_to(sys.prefix, target_is_directory=True)
    spellings.append(str(link / exe.relative_to(sys.prefix)))
    return spellings


def test_stop_stops_what_tether_p_started_whatever_the_interpreter_is_called(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, resident: Path, tmp_path: Path
) -> None:
    fake_api.script(reply(text("cold")), reply(text("warm")))
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    first, *others = _spellings(tmp_path)
    assert others, "no second spelling of the interpreter to try"

    def tether(python: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, "-m", "tui.cli", *args], cwd=tether_env.project, env={**tether_env.env, **env},
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip

    cold = tether(first, "-p", "one", "--verbose")
    assert cold.returncode == 0 and cold.stdout == "cold\n", cold.stderr
    assert "running in-process; starting a resident harness" in cold.stderr
    _wait_for_starts(resident)
    pid = _resident_pid(resident)
    assert pid is not None, "the first run started no resident harness"

    warm = tether(others[0], "-p", "two", "--verbose")
    assert warm.returncode == 0 and warm.stdout == "warm\n", warm.stderr
    assert f"running through the resident harness {pid}" in warm.stderr
    for python in others[1:]:  # every spelling finds the same one
        found = tether(python, "resident", "start")
        assert found.returncode == 0 and f"resident harness {pid} listening" in found.stdout, (
            python,
            found.stdout,
            found.stderr,
        )
    assert _resident_pid(resident) == pid
    status = tether(others[-1], "resident", "status")
    assert status.returncode == 0, status.stderr
    assert f"* pid {pid} " in status.stdout and str(resident) in status.stdout, status.stdout
    assert "1 runs served" in status.stdout, status.stdout

    stopped = tether(others[-1], "resident", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped resident harness {pid}" in stopped.stdout
    assert not _alive(pid)
    assert list(resident.glob("harness-*.sock")) == []
    again = tether(first, "resident", "status")
    assert "no resident harness is running" in again.stdout


def test_status_lists_and_stop_all_stops_every_checkouts_resident(
    tether_env: TetherEnv, resident: Path, tmp_path: Path
) -> None:
    other_checkout = tmp_path / "other-checkout"
    for package in ("agent", "session", "protos", "remote_sandbox", "tui"):
        shutil.copytree(ROOT / package, other_checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
    spellings = _spellings(tmp_path)
    mine = tether_env.run("resident", "start")
    assert mine.returncode == 0, mine.stderr
    other = subprocess.run(
        [spellings[-1], "-m", "tui.cli", "resident", "start"], cwd=tether_env.project,
        env={**tether_env.env, "PYTHONPATH": str(other_checkout)}, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    pids = [pid for pid in map(_listening_pid, sorted(resident.glob("harness-*.sock"))) if pid]
    assert len(pids) == 2, "two checkouts should have two resident harnesses"

    status = tether_env.run("resident", "status")
    assert status.returncode == 0, status.stderr
    for pid in pids:
        assert f"pid {pid} " in status.stdout, status.stdout
    assert str(other_checkout) in status.stdout and str(ROOT) in status.stdout, status.stdout

    just_mine = tether_env.run("resident", "stop")
    assert just_mine.returncode == 0 and just_mine.stdout.count("stopped resident harness") == 1, just_mine.stdout
    assert sum(_alive(pid) for pid in pids) == 1

    everyone = tether_env.run("resident", "stop", "--all")
    assert everyone.returncode == 0, everyone.stderr
    assert not [pid for pid in pids if _alive(pid)]
    assert list(resident.glob("harness-*.sock")) == []


def test_verbose_says_a_run_is_in_process_when_the_resident_harness_is_off(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    fake_api.script(reply(text("here")))
    proc = tether_env.run(
        "-p", "x", "--verbose", env={"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "tether: running in-process (TETHER_RESIDENT is off)" in proc.stderr
