"""Enter → the last line of a 20,000-character streamed Markdown answer on screen, in tmux.

A. Claude Code (npm ``@anthropic-ai/claude-code``) in tmux, against the same fake API.
B. ``tether`` in tmux.
Each first answers a short prompt (both warm), then the timed one. Both get the same answer (headings, lists, code blocks), 8 characters a text_delta,
as fast as the fake API sends it. Runs alternate A B A B; each run starts a fresh
process and waits for its prompt first, so only Enter → last line is timed.
Also printed: the floor, Rich's ``Markdown`` rendering the whole answer once.
Target: B ≤ 0.5 × A.

Run: .venv/bin/python bench/bench_transcript_stream.py [--runs N] [--size 120x34]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
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
    tether_ready,
    timed,
)
from bench.markdown_answer import markdown_answer  # noqa: E402
from bench.tmux_screen import TmuxScreen, stop_server  # noqa: E402
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text  # noqa: E402

LAST_LINE = "LAST LINE OF THE ANSWER"
WARM_REPLY = "warmed-up-and-ready"
TIMED_PROMPT = "show me the long answer"


def one_run(name: str, command: list[str], env: dict, cwd: Path, size: tuple[int, int], ready) -> float:  # type: ignore[no-untyped-def]
    """Start ``command``, wait for its prompt, type ``go`` + Enter; seconds from Enter to the last line."""
    screen = TmuxScreen(name, command, env, cwd, size)
    try:
        screen.wait_for(ready)
        # One short exchange first, so both are warm (the SDK imported, the connection open).
        screen.send("-l", "warm up")
        screen.wait_for(lambda s: "warm up" in s)
        screen.send("Enter")
        screen.wait_for(lambda s: WARM_REPLY in s)
        screen.send("-l", TIMED_PROMPT)
        screen.wait_for(lambda s: TIMED_PROMPT in s)
        start = time.perf_counter()
        screen.send("Enter")
        return screen.wait_for(lambda s: LAST_LINE in s) - start
    finally:
        screen.close()


def rich_floor(answer: str, width: int) -> float:
    """Rich rendering the whole answer once to a console of ``width`` columns."""
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor")
    return timed(lambda: console.print(Markdown(answer)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", default="120x34")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    answer = markdown_answer(20_000)
    project = scratch("project").resolve()
    (project / "README.md").write_text("bench project\n")
    try:
        claude = claude_code()
    except (SystemExit, subprocess.CalledProcessError) as exc:
        print(f"Claude Code cannot be installed here ({exc}); comparing with the Rich floor only")
        claude = None

    with FakeMessagesAPI(validate=False) as api:

        def respond(body: dict):  # type: ignore[no-untyped-def]
            # Claude Code puts system messages after the prompt: look at the whole request.
            timed = TIMED_PROMPT in json.dumps(body.get("messages", []))
            return reply(text(answer if timed else WARM_REPLY, delta_chars=8))

        api.default = respond
        times_cc: list[float] = []
        times_tether: list[float] = []
        for run in range(args.runs + 1):  # the first of each is a warm-up
            home = scratch("home")
            env = isolated_env(api.base_url, home)
            env["TERM"] = "xterm-256color"
            if claude is not None:
                seed_claude_home(home, project)
                t = one_run(
                    f"cc{run}",
                    claude,
                    env,
                    project,
                    (width, height),
                    claude_ready,
                )
                if run:
                    times_cc.append(t)
            t = one_run(f"tether{run}", tether(), env, project, (width, height), tether_ready)
            if run:
                times_tether.append(t)
        floors = [rich_floor(answer, width - 4) for _ in range(args.runs)]
    stop_server()

    print(f"answer: {len(answer):,} characters, 8 a delta; terminal {width}x{height}")
    print(summary("Rich Markdown, whole answer once (floor)", floors))
    if times_cc:
        print(summary("Claude Code: Enter → last line", times_cc))
    print(summary("tether: Enter → last line", times_tether))
    if times_cc:
        ratio = statistics.median(times_tether) / statistics.median(times_cc)
        print(f"ratio tether / Claude Code (medians): {ratio:.2f}x  (target ≤ 0.5x)")
    ratio_floor = statistics.median(times_tether) / statistics.median(floors)
    print(f"ratio tether / Rich floor (medians): {ratio_floor:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
