"""`list` and `search` over 1,000 sessions, through the index (which first checks every log
for changes), against bare baselines measured in the same run: a directory listing with a
stat per log, and a bare SQLite query of the same rows. Target: <= 0.1 s each.

Run: .venv/bin/python bench/bench_session_index.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from session.events import Event  # noqa: E402
from session.paths import project_root  # noqa: E402
from session.store import SessionStore  # noqa: E402

SESSIONS = 1000
WORDS = "parser lexer module refactor bug flaky test build docker grpc sandbox index search".split()


def write_sessions(home: Path, projects: list[Path]) -> None:
    """SESSIONS logs of ~30 events each, spread over the projects."""
    for n in range(SESSIONS):
        project = projects[n % len(projects)]
        session_id = str(uuid.uuid4())
        path = project_root(home, project) / f"{session_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        parent = None
        lines = []
        for step in range(30):
            word = WORDS[(n + step) % len(WORDS)]
            if step == 0:
                kind, payload = "meta", {"version": 1, "project_dir": str(project)}
            elif step % 3 == 1:
                kind, payload = "user", {"content": f"session {n} step {step}: please fix the {word} " * 3}
            elif step % 3 == 2:
                kind, payload = (
                    "assistant",
                    {
                        "message": {
                            "content": [
                                {"type": "text", "text": f"Looking at the {word} now. " * 5},
                                {"type": "tool_use", "id": f"t{step}", "name": "Bash", "input": {"command": "make"}},
                            ]
                        },
                        "cost_usd": 0.01,
                    },
                )
            else:
                kind, payload = (
                    "tool_result",
                    {"tool_use_id": f"t{step - 1}", "content": f"{word} output line\n" * 40, "is_error": False},
                )
            timestamp = f"2025-01-{1 + n % 28:02d}T00:00:{step:02d}.000Z"
            event = Event(str(uuid.uuid4()), parent, session_id, timestamp, kind, payload)
            lines.append(event.to_json_line())
            parent = event.uuid
        path.write_bytes(b"".join(lines))


def directory_listing(home: Path) -> int:
    """Baseline: what any list must at least do to notice changed logs: scandir + stat."""
    count = 0
    for folder in os.scandir(home / "projects"):
        for entry in os.scandir(folder.path):
            entry.stat()
            count += 1
    return count


def bare_query(index_file: Path) -> int:
    """Baseline: the listing query alone, on an open connection."""
    with sqlite3.connect(index_file) as connection:
        return len(connection.execute("SELECT * FROM sessions ORDER BY updated DESC").fetchall())


def timed(function) -> float:
    """Seconds one call of function takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    """Build the sessions, time each operation alternately, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory) / "home"
        projects = [Path(directory) / f"project{n}" for n in range(10)]
        write_sessions(home, projects)
        store = SessionStore(home)
        cold = timed(lambda: store.list())
        print(f"{SESSIONS} sessions; first list (builds the index from the logs): {cold * 1000:.0f} ms")
        assert len(store.list()) == SESSIONS and len(store.search("flaky", limit=SESSIONS)) == SESSIONS

        runs = {
            "list --all": lambda: store.list(),
            "list (one project)": lambda: store.list(projects[3]),
            "search (one project)": lambda: store.search("flaky test", projects[3]),
            "search --all 'docker'": lambda: store.search("docker", limit=50),
            "baseline: scandir+stat": lambda: directory_listing(home),
            "baseline: bare SQL": lambda: bare_query(home / "index.sqlite"),
        }
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):  # alternate A B C ... A B C
            for name, run in runs.items():
                timings[name].append(timed(run))
        medians = {name: statistics.median(values) for name, values in timings.items()}
        scan = medians["baseline: scandir+stat"]
        sql = medians["baseline: bare SQL"]
        for name, median in medians.items():
            line = f"{name:<24} median {median * 1000:7.2f} ms"
            if not name.startswith("baseline"):
                verdict = "ok" if median <= 0.1 else "MISSED"
                line += f"  ({median / scan:5.1f}x scandir+stat, {median / sql:5.1f}x bare SQL; target <= 100 ms: {verdict})"
            print(line)


if __name__ == "__main__":
    main()
