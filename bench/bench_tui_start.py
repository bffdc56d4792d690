"""Cold start of the TUI to a prompt that takes input, in tmux, against peers started the same way.

A. Claude Code (npm ``@anthropic-ai/claude-code``): spawn → its prompt drawn (``❯`` and its hint line).
B. A minimal Textual app (``bench/minimal_textual_app.py``: a scroll view, a ``TextArea`` and a status
   line): spawn → its placeholder on screen. The floor of any Textual program started this way.
C. ``tether``: spawn → the prompt's placeholder on screen (the prompt takes input) with the status bar
   drawn. The sandbox may still be starting: a prompt sent then waits for it.
D. ``tether``: spawn → the status bar says the sandbox is ready (for scale).
Runs interleave A B C D; each a fresh process and a fresh HOME.
Targets: C ≤ 0.6 × A and C ≤ 1.3 × B.

Run: .venv/bin/python bench/bench_tui_start.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    claude_code,
    claude_ready,
    isolated_env,
    scratch,
    seed_claude_home,
    summary,
    tether,
    tether_prompt_ready,
    tether_ready,
)
from bench.minimal_textual_app import READY_TEXT  # noqa: E402
from bench.tmux_screen import TmuxScreen, stop_server  # noqa: E402
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text  # noqa: E402

SIZE = (120, 34)


def time_to(name: str, command: list[str], env: dict, cwd: Path, *seen: Callable[[str], bool]) -> list[float]:
    """Spawn ``command`` in tmux; seconds until each of ``seen`` first holds for the screen."""
    start = time.perf_counter()
    screen = TmuxScreen(name, command, env, cwd, SIZE)
    try:
        return [screen.wait_for(check) - start for check in seen]
    finally:
        screen.close(wait=True)  # its shutdown (a sandbox host's, Claude Code's) is not the next start's


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    project = scratch("project").resolve()
    (project / "README.md").write_text("bench project\n")
    try:
        claude: list[str] | None = claude_code()
    except (SystemExit, subprocess.CalledProcessError) as exc:
        print(f"Claude Code cannot be installed here ({exc}); comparing with the minimal Textual app only")
        claude = None
    minimal = [sys.executable, str(Path(__file__).resolve().parent / "minimal_textual_app.py")]
    times: dict[str, list[float]] = {"claude": [], "minimal": [], "prompt": [], "ready": []}
    with FakeMessagesAPI(validate=False) as api:
        api.default = lambda _body: reply(text("ok"))
        for run in range(args.runs + 1):  # the first of each is a warm-up
            home = scratch("home")
            env = isolated_env(api.base_url, home)
            env["TERM"] = "xterm-256color"
            results: dict[str, float] = {}
            if claude is not None:
                seed_claude_home(home, project)
                results["claude"] = time_to(f"cc{run}", claude, env, project, claude_ready)[0]
            results["minimal"] = time_to(f"min{run}", minimal, env, project, lambda s: READY_TEXT in s)[0]
            prompt, ready = time_to(f"tether{run}", tether(), env, project, tether_prompt_ready, tether_ready)
            results["prompt"], results["ready"] = prompt, ready
            if run:
                for key, value in results.items():
                    times[key].append(value)
    stop_server()

    names = {
        "claude": "Claude Code: spawn → prompt",
        "minimal": "minimal Textual app: spawn → painted",
        "prompt": "tether: spawn → prompt takes input",
        "ready": "tether: spawn → sandbox ready",
    }
    for key, name in names.items():
        if times[key]:
            print(summary(name, times[key]))
    prompt_med = statistics.median(times["prompt"])
    if times["claude"]:
        print(
            f"ratio tether prompt / Claude Code (medians): {prompt_med / statistics.median(times['claude']):.2f}x"
            "  (target ≤ 0.6x)"
        )
    print(
        f"ratio tether prompt / minimal Textual app (medians): {prompt_med / statistics.median(times['minimal']):.2f}x"
        "  (target ≤ 1.3x)"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
