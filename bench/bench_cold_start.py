"""Cold start of tether -p against the SDK import alone, whole process, same run.

A. Baseline: ``python -c "import anthropic"``, a whole process: the floor any
   in-process run that uses the SDK pays.
B. ``tether -p go`` with TETHER_RESIDENT=0: truly cold, everything in-process,
   one answer from the project's fake Messages API.
   Target: B <= 1.2x A (everything else overlaps the SDK import).
C. ``tether -p go`` with the resident harness on but none running: the first
   run a user makes, which also starts the resident process for later runs
   (that start must not delay its answer). The resident process is stopped
   after every C run, so each one is a first run.

Run: .venv/bin/python bench/bench_cold_start.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import interleave, isolated_env, scratch, summary, tether  # noqa: E402
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text  # noqa: E402


def run_cli(cmd: list[str], env: dict, cwd: Path) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("result") != "done":
        raise SystemExit(f"{cmd}: unexpected result {result!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    project = scratch("project")
    (project / "README.md").write_text("bench project\n")
    home = scratch("tether-home")
    runtime = scratch("runtime")
    os.chmod(runtime, 0o700)

    with FakeMessagesAPI(validate=False) as api:
        api.default = lambda _body: reply(text("done"))
        env = isolated_env(api.base_url, home)
        cold_env = {**env, "TETHER_RESIDENT": "0"}
        first_env = {**env, "TETHER_RESIDENT": "1", "TETHER_RUNTIME_DIR": str(runtime)}
        command = ["-p", "go", "--output-format", "json"]

        def stop_residents() -> None:
            # Wait for the resident process the last first run started, then stop it: the next C is a first run too.
            subprocess.run([*tether(), "resident", "start"], env=first_env, capture_output=True, check=True)
            subprocess.run([*tether(), "resident", "stop", "--all"], env=first_env, capture_output=True, check=True)

        def first_run() -> None:
            run_cli([*tether(), *command], first_env, project)

        baseline = lambda: subprocess.run([sys.executable, "-c", "import anthropic"], env=env, check=True)  # noqa: E731
        cold = lambda: run_cli([*tether(), *command], cold_env, project)  # noqa: E731
        try:
            times = interleave([baseline, cold, first_run, stop_residents], args.runs)
        finally:
            subprocess.run([*tether(), "resident", "stop", "--all"], env=first_env, capture_output=True, check=False)

    names = ['python -c "import anthropic"', "tether -p, TETHER_RESIDENT=0", "tether -p, first run (starts resident)"]
    for name, series in zip(names, times[:3], strict=False):
        print(summary(name, series))
    base, cold_med, first_med = (statistics.median(t) for t in times[:3])
    print(f"cold one-answer run / bare SDK import = {cold_med / base:.2f}  (target <= 1.2)")
    print(f"first run (starting the resident) / bare SDK import = {first_med / base:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
