"""Resume a 50 MB session of 10,000 events (load, repair, build the message list) against a
bare loop of json.loads over the same lines. Targets: <= 0.3 s and <= 3x the baseline.

Run: .venv/bin/python bench/bench_session_resume.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
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

EVENTS = 10_000
TARGET_BYTES = 50 * 1024 * 1024


def write_session(home: Path, project: Path) -> Path:
    """A realistic log: prompts, answers with tool calls, large tool results, ~50 MB in all."""
    session_id = str(uuid.uuid4())
    path = project_root(home, project) / f"{session_id}.jsonl"
    path.parent.mkdir(parents=True)
    # Tool results carry most of the bytes, as in real sessions; size them so the whole
    # log comes to about TARGET_BYTES (the other events and the JSON framing take ~12%).
    result_size = int(TARGET_BYTES * 0.885) // (EVENTS * 2 // 5)
    filler = ("lorem ipsum dolor sit amet, consectetur adipiscing elit " * (result_size // 56 + 1))[:result_size]
    lines = []
    parent = None

    def add(kind: str, payload: dict) -> None:
        """Append one event below the previous one."""
        nonlocal parent
        event = Event(str(uuid.uuid4()), parent, session_id, "2025-01-01T00:00:00.000Z", kind, payload)
        lines.append(event.to_json_line())
        parent = event.uuid

    add("meta", {"version": 1, "project_dir": str(project), "cwd": str(project), "model": "m", "created_by": "bench"})
    n = 0
    while len(lines) < EVENTS:
        add("user", {"content": f"prompt {n}: please look at module {n} and fix what is broken"})
        for call in range(2):
            tool_id = f"toolu_{n}_{call}"
            add(
                "assistant",
                {
                    "message": {
                        "id": f"msg_{n}_{call}",
                        "model": "m",
                        "content": [
                            {
                                "type": "thinking",
                                "thinking": "I should look at the file. " * 10,
                                "signature": "c2ln" * 40,
                            },
                            {"type": "text", "text": f"Let me run step {call}."},
                            {
                                "type": "tool_use",
                                "id": tool_id,
                                "name": "Bash",
                                "input": {"command": f"cat module_{n}.py"},
                            },
                        ],
                        "stop_reason": "tool_use",
                        "usage": {"input_tokens": 1000, "output_tokens": 100},
                    },
                    "cost_usd": 0.01,
                },
            )
            add(
                "tool_result",
                {
                    "tool_use_id": tool_id,
                    "tool_name": "Bash",
                    "content": filler,
                    "is_error": False,
                    "output_blob": None,
                    "output_bytes": len(filler),
                },
            )
        n += 1
    path.write_bytes(b"".join(lines[:EVENTS]))
    return path


def resume(store: SessionStore, session_id: str) -> object:
    """What `tether --resume` does with the store: open the log and build the messages.

    The harness keeps the log for the whole session (agent/harness.py holds it), so it is
    returned with the messages and freed outside the timing, as the baselines' results are.
    """
    log = store.open(session_id)
    return log, log.conversation()


def baseline_discarding(path: Path) -> object:
    """A bare loop of json.loads over the same lines, each result thrown away at once."""
    for line in path.read_bytes().split(b"\n"):
        if line:
            json.loads(line)
    return None


def baseline_keeping(path: Path) -> object:
    """A bare loop of json.loads over the same lines, keeping the results (as resume must)."""
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def main() -> None:
    """Write the session, time resume and the baselines alternately, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory) / "home"
        path = write_session(home, Path(directory))
        store = SessionStore(home)
        size_mb = path.stat().st_size / 1024 / 1024
        print(f"session: {EVENTS} events, {size_mb:.1f} MB; {len(store.open(path.stem).conversation())} messages")
        runs = {
            "resume": lambda: resume(store, path.stem),
            "json.loads loop": lambda: baseline_discarding(path),
            "json.loads loop, kept": lambda: baseline_keeping(path),
        }
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):  # alternate A B C A B C so drift hits all alike
            for name, run in runs.items():
                start = time.perf_counter()
                result = run()
                timings[name].append(time.perf_counter() - start)
                del result  # freeing the previous result is not part of the next run's time
        medians = {name: statistics.median(values) for name, values in timings.items()}
        resume_median = medians["resume"]
        print(
            f"resume                       {_spread(timings['resume'])}"
            f"  (target <= 300 ms: {'ok' if resume_median <= 0.3 else 'MISSED'})"
        )
        for name in ("json.loads loop", "json.loads loop, kept"):
            ratio = resume_median / medians[name]
            print(
                f"baseline {name:<21} {_spread(timings[name])}"
                f"  ratio {ratio:.2f}x (target <= 3x: {'ok' if ratio <= 3 else 'MISSED'})"
            )


def _spread(values: list[float]) -> str:
    """Median, min and max of timings in milliseconds."""
    return (
        f"median {statistics.median(values) * 1000:7.1f} ms"
        f" (min {min(values) * 1000:6.1f}, max {max(values) * 1000:6.1f})"
    )


if __name__ == "__main__":
    main()
