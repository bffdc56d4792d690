"""tether -p against Claude Code -p, whole process, same fake Messages API, same run.

1. One-answer session: the model answers "done" at once.
   Target: tether <= 0.5x Claude Code.
2. Per tool-call cycle: a session where the model calls `Bash true` 10 times, minus a session
   with none, divided by 10. Target: tether <= 0.25x Claude Code (embedded local sandbox).

tether is measured twice: as users get it (through the resident harness, warm after the
first run), and with TETHER_RESIDENT=0 (everything imported in-process, every run).

Run: .venv/bin/python bench/bench_headless.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import claude_code, interleave, isolated_env, scratch, summary, tether  # noqa: E402
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use  # noqa: E402


def responder(tool_calls: int):
    """Answer with `Bash true` until the conversation holds ``tool_calls`` results, then "done"."""

    def respond(body: dict):
        if not body.get("tools"):
            return reply(text("done"))
        results = sum(
            1
            for m in body.get("messages", [])
            if m["role"] == "user" and isinstance(m["content"], list)
            for b in m["content"]
            if b.get("type") == "tool_result"
        )
        if results < tool_calls:
            return reply(tool_use("Bash", {"command": "true", "description": "Do nothing"}))
        return reply(text("done"))

    return respond


def run_cli(cmd: list[str], env: dict, cwd: Path) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("result") != "done":
        raise SystemExit(f"{cmd[0]}: unexpected result {result!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    claude = claude_code()
    project = scratch("project")
    (project / "README.md").write_text("bench project\n")
    claude_home = scratch("claude-home")
    (claude_home / ".claude.json").write_text(
        json.dumps(
            {
                "hasCompletedOnboarding": True,
                "projects": {str(project): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}},
            }
        )
    )
    tether_home = scratch("tether-home")

    results = {}
    for calls in (0, 10):
        with FakeMessagesAPI(validate=False) as api:
            api.default = responder(calls)
            claude_env = isolated_env(api.base_url, claude_home)
            tether_env = isolated_env(api.base_url, tether_home)
            cold_env = {**tether_env, "TETHER_RESIDENT": "0"}
            command = ["-p", "go", "--output-format", "json", "--allowedTools", "Bash"]
            # Bound now: each lambda is called within this iteration, but say so to the reader and the linter.
            cc = lambda c=command, e=claude_env: run_cli([*claude, *c], e, project)  # noqa: E731
            tt = lambda c=command, e=tether_env: run_cli([*tether(), *c], e, project)  # noqa: E731
            tt_cold = lambda c=command, e=cold_env: run_cli([*tether(), *c], e, project)  # noqa: E731
            try:
                results[calls] = interleave([cc, tt, tt_cold], args.runs)
            finally:
                subprocess.run([*tether(), "resident", "stop"], env=tether_env, check=False)

    names = ["Claude Code -p", "tether -p", "tether -p, TETHER_RESIDENT=0"]
    for calls, label in ((0, "one answer"), (10, "10 x Bash true")):
        for name, times in zip(names, results[calls], strict=False):
            print(summary(f"{name}, {label}", times))
    med = {calls: [statistics.median(t) for t in results[calls]] for calls in results}
    cycles = [(med[10][i] - med[0][i]) / 10 for i in range(3)]
    for i in (1, 2):
        print(f"one answer, whole process: {names[i]} / Claude Code = {med[0][i] / med[0][0]:.2f}  (target <= 0.5)")
    for i in (1, 2):
        print(
            f"per tool-call cycle: Claude Code {cycles[0] * 1000:.1f} ms, {names[i]} {cycles[i] * 1000:.1f} ms, "
            f"ratio {cycles[i] / cycles[0] if cycles[0] > 0 else float('nan'):.2f}  (target <= 0.25)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
