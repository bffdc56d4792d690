"""A program in a detached tmux session of its own, its screen read with capture-pane (benchmarks, e2e)."""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_serial = itertools.count()
_server_started = False

SOCKET = f"tether-bench-{os.getpid()}"
"""A tmux server of this process's own (``tmux -L``), so no one else's sessions are touched."""


class TmuxScreen:
    """One program running in tmux at a fixed size."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, size: tuple[int, int]) -> None:
        self.name = f"{name}-{next(_serial)}"
        """The tmux session's name."""
        global _server_started
        if not _server_started:
            # Keep the server up between sessions: one starting as the last ends would race its exit.
            subprocess.run(
                ["tmux", "-L", SOCKET, "start-server", ";", "set-option", "-g", "exit-empty", "off"], check=True
            )
            _server_started = True
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"cd {shlex.quote(str(cwd))} && exec env -i {exports} {shlex.join(command)}"
        subprocess.run(
            ["tmux", "-L", SOCKET, "new-session", "-d", "-s", self.name, "-x", str(size[0]), "-y", str(size[1]), line],
            check=True,
        )

    def text(self) -> str:
        """The screen as plain text."""
        return subprocess.run(
            ["tmux", "-L", SOCKET, "capture-pane", "-p", "-t", self.name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout

    def send(self, *keys: str) -> None:
        """Press keys (tmux key names, or literal text)."""
        subprocess.run(["tmux", "-L", SOCKET, "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, seen: Callable[[str], bool], timeout: float = 60.0) -> float:
        """Poll the screen until ``seen(screen)``; the perf_counter time it was first seen."""
        deadline = time.perf_counter() + timeout
        while True:
            screen = self.text()
            now = time.perf_counter()
            if seen(screen):
                return now
            if now > deadline:
                raise TimeoutError(f"{self.name}: not on screen after {timeout} s:\n{screen}")

    def close(self, *, wait: bool = False) -> None:
        """End the session (and the program in it); ``wait``: until the program and its children are gone.

        Waiting keeps one run's shutdown (a sandbox host stopping: ~0.1 s of CPU) out of the next run's figures.
        """
        tree = _process_tree(self.pid()) if wait else []
        subprocess.run(["tmux", "-L", SOCKET, "kill-session", "-t", self.name], capture_output=True, check=False)
        deadline = time.monotonic() + 10
        while tree and time.monotonic() < deadline:
            tree = [pid for pid in tree if _running(pid)]
            time.sleep(0.01)

    def pid(self) -> int:
        """The pid of the program in the pane (``exec`` keeps it the same through ``env``)."""
        out = subprocess.run(
            ["tmux", "-L", SOCKET, "display-message", "-p", "-t", self.name, "#{pane_pid}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out.strip())


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def stop_server() -> None:
    """Stop this process's tmux server (every session it still has)."""
    global _server_started
    subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True, check=False)
    _server_started = False
