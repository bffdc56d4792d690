"""The crash test of the session store (issue 4): SIGKILL at random moments, and at every write.

The first test runs a real ``tether -p`` driven by the fake Messages API through
scripted tool turns (Write, Bash, Read, Glob, Grep, three calls in one message,
outputs and inputs that span many pages of the log) and kills the process writing
the session log with SIGKILL at a moment drawn from a seeded ``random.Random``:

- ``request``: the fake kills it from its server thread the instant request k arrives;
- ``stream``: the fake stalls reply k after j SSE events, and the kill lands mid-stream;
- ``tool``: reply k is a Bash call blocked on a FIFO nobody opens; the kill lands once it runs;
- ``output``: the kill lands after the n-th line tether prints (``--output-format stream-json``).

The process killed is the one holding the session log open: ``tether -p`` itself
when it runs in-process (the first session), else the child the resident harness
forked for it, as users' runs go (a start then costs a fork, not seconds of imports).

After each kill the session must list, load, rebuild a message list the Messages
API accepts, and hold everything that was acknowledged: whatever the fake saw in
a request body (the harness logs every message before it sends it), every reply
served before that request, every blob a result names, and no assistant message
that was never served. The history never changes from one kill to the next. Then
the session is resumed (``-r ID -p continue``): that process's first request must
carry exactly the reloaded conversation plus the new prompt, and it is the next to
be killed. After KILLS_PER_SESSION kills a last resume answers and must exit 0.
Sessions run in parallel. ``TETHER_CRASH_RUNS`` sets the number of kills (default
200), ``TETHER_CRASH_SEED`` the seed (printed; every failure names it, with the
session, the process and the plan).

SIGKILL from outside almost never lands inside a write(2), so the second test
makes sure of those moments: a process writing a session through the store kills
itself at its n-th write, before it or half-way through it, for every n; the
session must then list under its project, load, and resume.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from session.conversation import INTERRUPTED_TOOL_RESULT
from session.store import SessionLog, SessionStore
from tests.fixtures.fake_api import (
    FakeMessagesAPI,
    Hang,
    Reply,
    ScriptedResponse,
    TextBlock,
    ToolUseBlock,
    error,
    reply,
    text,
    tool_use,
)
from tests.fixtures.session_support import assert_valid_messages
from tests.fixtures.tether_cli import TETHER, TetherEnv, clean_env

SEED = int(os.environ.get("TETHER_CRASH_SEED", "4004"))
"""The seed of every random choice: the same seed makes the same kill plans."""

KILLS = int(os.environ.get("TETHER_CRASH_RUNS", "200"))
"""How many times a process writing a session is killed, in all."""

KILLS_PER_SESSION = 10
"""Kills one session takes before a last resume runs it to the end."""

IN_PROCESS_SESSIONS = 1
"""The first sessions run ``tether -p`` in-process (TETHER_RESIDENT=0); the rest go through the resident harness."""

SESSIONS_PER_RESIDENT = 50 // KILLS_PER_SESSION
"""Sessions that share one resident harness.

Its shared sandbox host keeps the sandbox of every killed run (nobody releases
it) and refuses a tenant's 65th, so a fresh resident serves every 50 kills.
"""

WORKERS = max(2, min((os.cpu_count() or 1) + 1, 6))
"""Sessions driven at the same time: a run waits on the fake, the disk and the sandbox, so one more than CPUs."""

TOOL_TURNS = 8
"""Tool turns a process is scripted to run before its final answer."""

OUTPUT_LINES = 55
"""An ``output`` kill lands after 1..OUTPUT_LINES printed lines (a whole run prints 57 to 110)."""

WAIT_S = 60.0
"""The longest any one wait may take (an in-process start on a loaded machine takes seconds)."""

PROMPT = "Write a note, check it in every way you can, then say you are done."
RESUME_PROMPT = "continue"
FINAL_TEXT = "All done: the notes are written and checked."

KILLED_EXIT_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL)
"""How a killed run ends: killed itself, or told so by the resident harness (128 + 9, as shells say)."""


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class KillPlan:
    """Where one process is killed."""

    kind: str
    """request, stream, tool or output (see the module docstring)."""
    step: int = 0
    """The model request (1-based, counted in this process) a request/stream/tool kill is tied to."""
    after_events: int = 0
    """stream: how many SSE events of the reply arrive before the stall."""
    after_lines: int = 0
    """output: how many printed lines come before the kill."""

    @classmethod
    def draw(cls, rng: random.Random) -> KillPlan:
        """A random plan: every kind, at every step of a run."""
        kind = rng.choices(("request", "stream", "tool", "output"), weights=(3, 3, 2, 3))[0]
        if kind == "request":
            return cls(kind, step=rng.randint(1, TOOL_TURNS + 1))
        if kind == "stream":
            # A reply is 9 to 30 events: past its last one, only the end of the HTTP body is missing.
            return cls(kind, step=rng.randint(1, TOOL_TURNS + 1), after_events=rng.randint(0, 14))
        if kind == "tool":
            return cls(kind, step=rng.randint(1, TOOL_TURNS))
        return cls(kind, after_lines=rng.randint(1, OUTPUT_LINES))


def tool_turn(step: int, run: int) -> Reply:
    """Reply `step` (1..TOOL_TURNS) to process number `run`: a different mix of tools each."""
    note = f"notes/run-{run}.txt"
    if step == 1:
        lines = "".join(f"line {i} of note {run}\n" for i in range(40))
        return reply(text(f"Run {run}: writing the note."), tool_use("Write", {"file_path": note, "content": lines}))
    if step == 2:
        return reply(tool_use("Bash", {"command": f"wc -l {note} && ls notes", "description": "Count lines"}))
    if step == 3:
        return reply(tool_use("Read", {"file_path": note, "offset": 5, "limit": 10}))
    if step == 4:
        return reply(
            text("Three checks at once."),
            tool_use("Read", {"file_path": note}),
            tool_use("Glob", {"pattern": "notes/*.txt"}),
            tool_use("Bash", {"command": "echo checked; exit 3"}),
        )
    if step == 5:
        # Capped at 30,000 characters for the model: a log line of eight pages.
        return reply(tool_use("Bash", {"command": "seq 1 40000", "description": "A long output"}))
    if step == 6:
        # A large tool input: the assistant's own line spans several pages.
        big = "".join(f"{i:06d} {'x' * 57}\n" for i in range(200))
        return reply(tool_use("Write", {"file_path": f"notes/big-{run}.txt", "content": big}))
    if step == 7:
        # U+2028 and a tab in the output: JSON escapes neither into a raw newline.
        return reply(tool_use("Bash", {"command": "printf 'a\\342\\200\\250b\\tc \\342\\234\\223\\n'; echo warn >&2"}))
    return reply(text("A last look \u2028 before answering."), tool_use("Grep", {"pattern": "line 1", "path": "notes"}))


STARTED_MARK = "blocked-tool-started"
"""A FIFO in the workspace (the project directory) the blocked tool writes to once it runs."""


def blocked_tool_turn() -> Reply:
    """A Bash call that says it started, then blocks on a FIFO nobody will open: it ends only by the kill.

    The workspace outlives a killed run (it is the project directory, or restored into the next
    sandbox), so an earlier run's FIFO may still be there. It says "started" into the test's FIFO
    (see ``_watch_start``): stream-json, as Claude Code's, carries no live tool output.
    """
    command = f"rm -f gate && mkfifo gate && echo started > {STARTED_MARK} && cat gate"
    return reply(text("Waiting at the gate."), tool_use("Bash", {"command": command, "timeout": 60_000}))


# --------------------------------------------------------------------------- one process


class _WakingEvent(threading.Event):
    """A threading.Event that also wakes everyone waiting on a Condition when set."""

    def __init__(self, wake: threading.Condition) -> None:
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        """Set the event and notify the condition."""
        super().set()
        with self._wake:
            self._wake.notify_all()


class TetherRun:
    """One running ``tether -p`` whose stdout lines a thread collects."""

    def __init__(self, env: TetherEnv, args: list[str], wake: threading.Condition, stderr_path: Path) -> None:
        self.wake = wake
        """Notified on every printed line and on exit."""
        self.lines: list[bytes] = []
        """The lines printed so far."""
        self.exited = False
        """Whether the process has exited (and been reaped)."""
        self.stderr_path = stderr_path
        """Where its stderr goes."""
        with open(stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [*TETHER, *args], cwd=env.project, env=env.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr,
            )  # fmt: skip
            """The ``tether`` process (with the resident harness, a thin client of the writer)."""
        self._reader = threading.Thread(target=self._read, name=f"tether-{self.process.pid}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.wake:
                self.lines.append(line)
                self.wake.notify_all()
        self.process.wait()
        with self.wake:
            self.exited = True
            self.wake.notify_all()

    def finish(self) -> int:
        """Wait for the exit and the last line; the exit code (negative: killed by that signal)."""
        code = self.process.wait(timeout=WAIT_S)
        self._reader.join(timeout=WAIT_S)
        return code

    def said(self) -> str:
        """The end of what it printed on stdout and stderr, for failure messages."""
        try:
            stderr = self.stderr_path.read_text(errors="replace")[-3000:]
        except OSError as exc:
            stderr = f"({exc})"
        stdout = b"".join(self.lines[-5:]).decode(errors="replace")[-3000:]
        return f"--- its stdout ends ---\n{stdout}\n--- its stderr ends ---\n{stderr}"


def writers_of(path: Path) -> list[int]:
    """The processes, other than this one, that hold the file at `path` open (a session log's writer)."""
    info, me, holders = path.stat(), os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                # The name an fd shows is the one it was opened by: a new log's is its
                # creation's temporary name, since removed. The file is what counts.
                if os.readlink(fd.path).startswith(str(path)) and os.stat(fd.path).st_ino == info.st_ino:
                    holders.append(int(entry.name))
                    break
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return holders


# --------------------------------------------------------------------------- one session


@dataclass
class CrashStats:
    """What the kills hit, for the summary line."""

    kinds: Counter = field(default_factory=Counter)
    """Kills by kind."""
    completed: int = 0
    """Processes that ended on their own before their kill."""
    torn_tails: int = 0
    """Kills after which the log did not end in a newline."""
    interrupted_tools: int = 0
    """Kills after which the reloaded conversation answered a call with the synthetic error."""
    resumes_checked: int = 0
    """Resumed processes whose first request was compared with the reloaded conversation."""

    def add(self, other: CrashStats) -> None:
        """Add other's counts to these."""
        self.kinds.update(other.kinds)
        self.completed += other.completed
        self.torn_tails += other.torn_tails
        self.interrupted_tools += other.interrupted_tools
        self.resumes_checked += other.resumes_checked


class CrashSession:
    """One session killed again and again: the fake API it talks to, its checks, its state."""

    def __init__(self, root: Path, number: int, kills: int, stop: threading.Event, runtime: Path | None) -> None:
        self.number = number
        """The session's number in this test (names its random stream and its folder)."""
        self.kills = kills
        """How many kills it takes."""
        self.rng = random.Random(f"{SEED}:{number}")
        """Its own random stream: the plans do not depend on how the sessions interleave."""
        self.stop = stop
        """Set when another session failed: give up early."""
        self.root = root
        """Its folder: homes, project, stderr of every process."""
        env = clean_env(root)
        env.update(TETHER_HOME=str(root / "home"), TMPDIR=str(root / "tmp"), ANTHROPIC_API_KEY="sk-test")
        if runtime is not None:
            env.update(TETHER_RESIDENT="1", TETHER_RUNTIME_DIR=str(runtime))
        (root / "tmp").mkdir()
        (root / "project").mkdir()
        self.env = TetherEnv(env=env, home=root / "home", project=root / "project")
        """Where its processes run: their own HOME, TETHER_HOME, project and (maybe) resident harness."""
        self.store = SessionStore(self.env.home)
        """The store the checks read, as `tether sessions` would."""
        self.api = FakeMessagesAPI()
        """Its own fake Messages API; `_respond` answers every request."""
        self.api.default = self._respond
        self.stats = CrashStats()
        """What its kills hit."""
        self.session_id: str | None = None
        """The session's id, once its log exists."""
        self.durable: list[dict[str, Any]] = []
        """The conversation as last reloaded: no later reload may change it."""
        self.runs = 0
        """Processes started so far."""
        # What the fake's server threads and the driver share, guarded by `wake`.
        self.wake = threading.Condition()
        """Notified whenever a kill's moment may have come."""
        self.run: TetherRun | None = None
        """The current process."""
        self.model = ""
        """The model name the current process asks for."""
        self.plan: KillPlan | None = None
        """Its kill plan (None: the last resume, which must answer)."""
        self.final_step = TOOL_TURNS + 1
        """The request the final answer goes to."""
        self.step = 0
        """Requests it has made."""
        self.killed_by_fake = False
        """Whether the fake killed it (a ``request`` plan)."""
        self.stall: Hang | None = None
        """The stalled reply of a ``stream`` plan, once served."""
        self.release = threading.Event()
        """Ends the stall."""

    # -- the driver

    def drive(self) -> CrashStats:
        """Kill the session `kills` times, then resume it to the end; return what happened."""
        with self.api:
            self.env.env["ANTHROPIC_BASE_URL"] = self.api.base_url
            try:
                kills = 0
                while kills < self.kills and not self.stop.is_set():
                    plan = KillPlan.draw(self.rng)
                    if self._kill_once(plan):
                        kills += 1
                        self.stats.kinds[plan.kind] += 1
                if not self.stop.is_set():
                    self._finish()
            except BaseException:
                if self.run is not None:
                    with contextlib.suppress(AssertionError, OSError):
                        self._kill_writer(must_exist=False)  # with the resident harness, not the client alone
                    self.run.process.kill()
                raise
            finally:
                self.release.set()
                self.store.close()
        return self.stats

    def _start(self, plan: KillPlan | None, output_format: str) -> TetherRun:
        """Start the next process: a new session, or a resume of this one."""
        self.runs += 1
        args = ["-p", PROMPT] if self.session_id is None else ["-p", RESUME_PROMPT, "-r", self.session_id]
        # A model name per process tells its requests apart from a late one of a killed process.
        model = f"crash-run-{self.runs}"
        args += ["--output-format", output_format, "--permission-mode", "bypassPermissions", "--model", model]
        with self.wake:
            self.model = model
            self.plan = plan
            self.final_step = TOOL_TURNS + 1 if plan is not None else 1
            self.step = 0
            self.killed_by_fake = False
            self.stall = None
            self.release = threading.Event()
            self.run = TetherRun(self.env, args, self.wake, self.root / f"stderr-{self.runs}.txt")
            return self.run

    def _kill_once(self, plan: KillPlan) -> bool:
        """Run one process and kill it as planned; False if it ended on its own first."""
        started = self._watch_start() if plan.kind == "tool" else None
        run = self._start(plan, "stream-json")
        if plan.kind == "request":
            self._wait(run, plan, lambda: self.killed_by_fake)
        elif plan.kind == "stream":
            self._wait(run, plan, lambda: self.stall is not None and self.stall.reached.is_set())
        elif plan.kind == "tool":
            assert started is not None
            self._wait(run, plan, started.is_set)
        else:
            self._wait(run, plan, lambda: len(run.lines) >= plan.after_lines)
        if not self.killed_by_fake:
            # Blocked in a tool, it must be there; after a stall or some output it may be ending on its own.
            self._kill_writer(must_exist=plan.kind == "tool")
        self.release.set()  # a stalled reply goes on to a dead socket, or to a run that is ending anyway
        if started is not None:
            self._stop_watching_start()
        code = self._finish_run(run, plan)
        if code not in (*KILLED_EXIT_CODES, 0):
            raise AssertionError(self._describe(f"tether exited {code} instead of being killed", plan))
        self._check(plan, completed=code == 0)
        if code == 0:
            self.stats.completed += 1
            # A few runs outpace an `output` or late `stream` kill; many means the kills miss.
            assert self.stats.completed <= self.kills, self._describe("most runs end before their kill", plan)
        return code != 0

    def _finish(self) -> None:
        """Resume the session once more and let it answer: it must end cleanly."""
        run = self._start(None, "json")
        code = self._finish_run(run, None)
        assert code == 0, self._describe(f"the final resume exited {code}", None)
        result = json.loads(run.lines[-1])
        assert result["is_error"] is False and result["result"] == FINAL_TEXT, result
        assert result["session_id"] == self.session_id
        self._check(None, completed=True)
        assert self.durable[-1] == {"role": "assistant", "content": [{"type": "text", "text": FINAL_TEXT}]}

    def _finish_run(self, run: TetherRun, plan: KillPlan | None) -> int:
        """The run's exit code, once it has exited."""
        try:
            return run.finish()
        except subprocess.TimeoutExpired:
            raise AssertionError(self._describe(f"tether did not exit within {WAIT_S:g} s", plan)) from None

    def _watch_start(self) -> threading.Event:
        """An event set (waking the waiters) once the blocked tool writes to the FIFO STARTED_MARK."""
        mark = self.env.project / STARTED_MARK
        mark.unlink(missing_ok=True)
        os.mkfifo(mark)
        started = _WakingEvent(self.wake)

        def watch() -> None:
            with open(mark, "rb") as fifo:  # opens once the tool opens it to write
                if fifo.read():
                    started.set()

        threading.Thread(target=watch, name="blocked-tool-watch", daemon=True).start()
        return started

    def _stop_watching_start(self) -> None:
        """Let a watcher whose tool never ran go (it reads an empty FIFO), and remove the FIFO."""
        mark = self.env.project / STARTED_MARK
        with contextlib.suppress(OSError):  # ENXIO: the watcher is done already
            os.close(os.open(mark, os.O_WRONLY | os.O_NONBLOCK))
        mark.unlink(missing_ok=True)

    def _wait(self, run: TetherRun, plan: KillPlan, moment: Callable[[], bool]) -> None:
        """Wait for the kill's moment, or for the process to end first."""
        with self.wake:
            if not self.wake.wait_for(lambda: moment() or run.exited or bool(self.api.failures), WAIT_S):
                raise AssertionError(self._describe(f"the kill's moment did not come within {WAIT_S:g} s", plan))
        assert not self.api.failures, self._describe(f"the fake's responder failed: {self.api.failures}", plan)

    def _kill_writer(self, *, must_exist: bool) -> None:
        """SIGKILL the process writing the session log (if none is left, the run is ending on its own)."""
        logs = sorted(self.env.home.rglob("*.jsonl"))
        assert len(logs) == 1, self._describe(f"expected one session log, found {logs}", self.plan)
        writers = writers_of(logs[0])
        assert len(writers) <= 1, self._describe(f"{logs[0]} has {len(writers)} writers: {writers}", self.plan)
        assert writers or not must_exist, self._describe(f"no process holds {logs[0]} open mid-run", self.plan)
        for pid in writers:
            with contextlib.suppress(ProcessLookupError):  # it ended on its own between the look and the kill
                os.kill(pid, signal.SIGKILL)

    # -- the fake's side (runs in the fake's server threads)

    def _respond(self, body: dict[str, Any]) -> ScriptedResponse:
        with self.wake:
            if body.get("model") != self.model:
                return error(500, "api_error", "a request from a process that was killed")
            self.step += 1
            step, plan, final_step, run_number = self.step, self.plan, self.final_step, self.runs
        if step > final_step:
            return error(500, "api_error", "past the end of the script")
        response = reply(text(FINAL_TEXT)) if step == final_step else tool_turn(step, run_number)
        if plan is None or plan.kind == "output" or step != plan.step:
            return response
        if plan.kind == "tool":
            return blocked_tool_turn()
        if plan.kind == "stream":
            stall = Hang(response, plan.after_events, self.release, _WakingEvent(self.wake))
            with self.wake:
                self.stall = stall
            return stall
        self._kill_writer(must_exist=True)
        with self.wake:
            self.killed_by_fake = True
            self.wake.notify_all()
        return error(500, "api_error", "nobody is listening any more")

    # -- the checks

    def _check(self, plan: KillPlan | None, *, completed: bool) -> None:
        """After a process ended: the session lists, loads, is valid and lost nothing acknowledged."""
        where = self._describe("", plan)
        # This process's requests; one cut short by the kill has no body.
        requests = [r for r in self.api.message_requests if isinstance(r.body, dict) and r.body["model"] == self.model]
        for request in requests:
            assert_valid_messages(request.body["messages"])
        if requests:
            expected_first = _with_prompt(self.durable, RESUME_PROMPT if self.session_id else PROMPT)
            assert _plain(requests[0].body["messages"]) == expected_first, (
                f"{where}: the first request does not carry the reloaded conversation plus the prompt"
            )
            if self.session_id is not None:
                self.stats.resumes_checked += 1
        logs = sorted(self.env.home.rglob("*.jsonl"))
        if self.session_id is None:
            if not logs:
                assert not requests, f"{where}: requests were sent, but no session log exists"
                return  # killed before the session existed: the next process starts a new one
            self.session_id = logs[0].stem
        assert [p.stem for p in logs] == [self.session_id], f"{where}: expected only {self.session_id}, found {logs}"
        if not logs[0].read_bytes().endswith(b"\n"):
            self.stats.torn_tails += 1

        listed = self.store.list(self.env.project)
        assert [s.session_id for s in listed] == [self.session_id], f"{where}: listed {listed}"
        log = self.store.open(self.session_id)
        events = log.events()
        assert listed[0].message_count == sum(e.type in ("user", "assistant") for e in events), where
        _assert_blobs_present(log, where)
        conversation = log.conversation()
        log.close()
        assert_valid_messages(conversation)
        plain = _plain(conversation)
        _assert_extends(self.durable, plain, f"{where}: the history changed")
        if requests:
            sent = _plain(requests[-1].body["messages"])
            _assert_extends(sent, plain, f"{where}: the last request's messages are not all in the log")
            for request in requests[:-1]:
                served = _assistant(request.served)
                at = len(request.body["messages"])
                assert served is not None and plain[at] == served, f"{where}: a served reply is missing"
            tail = plain[len(sent) :]
            assert len(tail) <= 2, f"{where}: the log holds more than was ever sent: {tail}"
            if tail:
                assert tail[0] == _assistant(requests[-1].served), f"{where}: an assistant message never served"
        if completed:
            assert plain and plain[-1]["role"] == "assistant", f"{where}: ended without an answer"
        if plain and any(block.get("content") == INTERRUPTED_TOOL_RESULT for block in plain[-1]["content"]):
            self.stats.interrupted_tools += 1
        self.durable = plain

    def _describe(self, what: str, plan: KillPlan | None) -> str:
        where = f"seed {SEED}, session {self.number}, process {self.runs}, {plan}"
        if not what:
            return where
        said = f"\n{self.run.said()}" if self.run is not None else ""
        return f"{where}: {what}{said}"


# --------------------------------------------------------------------------- helpers


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as lists of blocks without cache_control: what the log must reproduce."""
    plain = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        blocks = [{k: v for k, v in block.items() if k != "cache_control"} for block in content]
        plain.append({"role": message["role"], "content": blocks})
    return plain


def _with_prompt(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """What a resumed process sends first: the conversation, the prompt joining a trailing user message."""
    expected = copy.deepcopy(messages)
    block = {"type": "text", "text": prompt}
    if expected and expected[-1]["role"] == "user":
        expected[-1]["content"].append(block)
    else:
        expected.append({"role": "user", "content": [block]})
    return expected


def _assert_extends(prefix: list[dict[str, Any]], whole: list[dict[str, Any]], what: str) -> None:
    """whole starts with prefix; its last (user) message may have gained blocks at its end."""
    if not prefix:
        return
    assert len(whole) >= len(prefix), f"{what}: {len(whole)} messages, fewer than {len(prefix)}"
    last = len(prefix) - 1
    assert whole[:last] == prefix[:last], f"{what}: the messages before the last differ"
    grown = whole[last]
    assert grown["role"] == prefix[last]["role"], f"{what}: message {last} changed role"
    assert grown["content"][: len(prefix[last]["content"])] == prefix[last]["content"], (
        f"{what}: message {last} differs:\n{prefix[last]}\n{grown}"
    )


def _assistant(served: ScriptedResponse | None) -> dict[str, Any] | None:
    """The assistant message a served reply becomes, or None if no reply was served."""
    if isinstance(served, Hang):
        served = served.reply
    if not isinstance(served, Reply):
        return None
    blocks: list[dict[str, Any]] = []
    for block in served.blocks:
        if isinstance(block, TextBlock):
            blocks.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolUseBlock):
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return {"role": "assistant", "content": blocks}


def _assert_blobs_present(log: SessionLog, where: str) -> None:
    """Every full output a logged result names is stored whole (blobs are written before the result is logged)."""
    for event in log.events():
        sha = event.payload.get("output_blob") if event.type == "tool_result" else None
        if sha is not None:
            blob = log.get_blob(sha)
            assert hashlib.sha256(blob).hexdigest() == sha, f"{where}: blob {sha} is damaged"
            assert len(blob) == event.payload["output_bytes"], f"{where}: blob {sha} has the wrong size"


def _stop_residents(runtime: Path) -> None:
    """SIGTERM every resident harness listening in runtime and wait for it to exit."""
    for path in runtime.glob("harness-*.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(path))
            except OSError:
                continue  # it already exited
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        pidfd = os.pidfd_open(pid)
        try:
            os.kill(pid, signal.SIGTERM)
            ready, _, _ = select.select([pidfd], [], [], WAIT_S)
        finally:
            os.close(pidfd)
        assert ready, f"the resident harness {pid} did not exit on SIGTERM"


# --------------------------------------------------------------------------- SIGKILL at random moments


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("crash")
    sessions = math.ceil(KILLS / KILLS_PER_SESSION)
    print(f"\nsession crash test: seed {SEED}, {KILLS} kills over {sessions} sessions, {WORKERS} at a time")
    stop = threading.Event()
    failures: list[BaseException] = []  # in the order they happened: the first is the cause
    failures_lock = threading.Lock()
    started = time.monotonic()

    def drive(number: int) -> CrashStats:
        kills = min(KILLS_PER_SESSION, KILLS - number * KILLS_PER_SESSION)
        folder = root / f"s{number:02d}"
        folder.mkdir()
        through = None
        if number >= IN_PROCESS_SESSIONS:
            through = root / f"runtime-{(number - IN_PROCESS_SESSIONS) // SESSIONS_PER_RESIDENT}"
            through.mkdir(mode=0o700, exist_ok=True)
        began = time.monotonic()
        try:
            stats = CrashSession(folder, number, kills, stop, through).drive()
            mode = "in-process" if through is None else "resident"
            print(f"session {number} ({mode}): {kills} kills in {time.monotonic() - began:.1f} s")
            return stats
        except BaseException as failure:
            with failures_lock:
                failures.append(failure)
            stop.set()
            raise

    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(drive, number) for number in range(sessions)]
    finally:
        for runtime in root.glob("runtime-*"):
            _stop_residents(runtime)
    if failures:
        raise failures[0]
    totals = CrashStats()
    for future in futures:
        totals.add(future.result())
    print(
        f"session crash test: {sum(totals.kinds.values())} kills {dict(totals.kinds)}, "
        f"{totals.completed} runs ended before their kill, {totals.resumes_checked} resumes checked, "
        f"{totals.torn_tails} torn tails, {totals.interrupted_tools} interrupted tool calls repaired, "
        f"in {time.monotonic() - started:.0f} s"
    )
    assert sum(totals.kinds.values()) == KILLS


# --------------------------------------------------------------------------- a kill at every write

WRITER_SCRIPT = """
import os, signal, sys
from pathlib import Path
from session.store import SessionStore

home, project, kill_at, how, resume_id = sys.argv[1:]
kill_at, writes, real_write = int(kill_at), 0, os.write

def write(fd, data):
    # Fault injection: this process dies at its kill_at-th write(2), before it or half-way through it.
    global writes
    writes += 1
    if writes == kill_at:
        if how == "half":
            real_write(fd, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)

os.write = write
store = SessionStore(Path(home))

def append(log, kind, payload):
    event = log.append(kind, payload)
    print("acked", event.uuid, flush=True)

def assistant(*blocks):
    return {"message": {"id": "msg_1", "model": "m", "content": list(blocks), "stop_reason": "end_turn",
                        "usage": {"input_tokens": 1, "output_tokens": 1}}, "cost_usd": None}

def bash(tool_use_id):
    return {"type": "tool_use", "id": tool_use_id, "name": "Bash", "input": {"command": "seq 1 20000"}}

def result(tool_use_id, content, blob=None, size=None):
    return {"tool_use_id": tool_use_id, "tool_name": "Bash", "content": content, "is_error": False,
            "output_blob": blob, "output_bytes": len(content) if size is None else size}

if resume_id == "-":
    log = store.create(Path(project))
    print("acked", log.events()[0].uuid, flush=True)
    append(log, "user", {"content": "the first prompt"})
    append(log, "sandbox", {"event": "provisioned", "host": "embedded", "sandbox_id": "sb-1", "recipe": {}})
    append(log, "assistant", assistant({"type": "text", "text": "one call"}, bash("toolu_1")))
    full = "".join(f"{i}\\n" for i in range(20000)).encode()
    blob = log.put_blob(full)
    append(log, "tool_result", result("toolu_1", full.decode()[:30000], blob, len(full)))
    append(log, "assistant", assistant(bash("toolu_2"), bash("toolu_3")))
    append(log, "tool_result", result("toolu_2", "short"))
    append(log, "tool_result", result("toolu_3", "x" * 40000))
    append(log, "assistant", assistant({"type": "text", "text": "done"}))
    append(log, "title", {"title": "a title", "source": "model"})
else:
    log = store.open(resume_id)
    append(log, "user", {"content": "continue"})
    append(log, "assistant", assistant({"type": "text", "text": "resumed"}))
print("writes", writes, flush=True)
"""
"""A scripted session written through the store by a process that SIGKILLs itself at one chosen write."""


def _write_session(home: Path, project: Path, kill_at: int, how: str, resume_id: str = "-") -> tuple[int, list[str]]:
    """Run WRITER_SCRIPT; its exit code and the uuids of the events whose append returned."""
    home.parent.mkdir(exist_ok=True)
    env = clean_env(home.parent)
    done = subprocess.run(
        [sys.executable, "-c", WRITER_SCRIPT, str(home), str(project), str(kill_at), how, resume_id],
        env=env, capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"the writer failed ({done.returncode}):\n{done.stderr}")
    acked = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("acked ")]
    return done.returncode, acked


def test_a_kill_at_any_write_leaves_a_session_that_loads_and_resumes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    code, acked = _write_session(tmp_path / "count" / "home", project, 0, "none")
    assert code == 0 and len(acked) == 10
    writes = len(acked) + 1  # one write per event, and one for the blob

    for kill_at in range(1, writes + 1):
        for how in ("before", "half"):
            case = f"write {kill_at} of {writes}, killed {how} it"
            home = tmp_path / f"{kill_at}-{how}" / "home"
            code, acked = _write_session(home, project, kill_at, how)
            assert code == -signal.SIGKILL, case
            store = SessionStore(home)
            listed = store.list(project)
            if not acked:
                assert listed == [], f"{case}: a session without its meta line is listed: {listed}"
                continue
            assert [s.project_dir for s in listed] == [project.resolve()], f"{case}: listed {listed}"
            session_id = listed[0].session_id
            loaded = store.open(session_id)
            assert [e.uuid for e in loaded.events()][: len(acked)] == acked, f"{case}: an acknowledged event is lost"
            assert_valid_messages(loaded.conversation())
            _assert_blobs_present(loaded, case)

            code, resumed = _write_session(home, project, 0, "none", session_id)
            assert code == 0, case
            reloaded = store.open(session_id)
            uuids = [e.uuid for e in reloaded.events()]
            assert uuids[: len(acked)] == acked and uuids[-2:] == resumed, f"{case}: the resume lost events"
            conversation = reloaded.conversation()
            assert_valid_messages(conversation)
            assert conversation[-1] == {"role": "assistant", "content": [{"type": "text", "text": "resumed"}]}
            assert reloaded.path.read_bytes().endswith(b"\n"), case
            store.close()
