"""SessionLog.append (serialise, one write, fsync) p50 against a bare os.write + os.fsync of
the same bytes on the same kind of file, measured alternately in the same run.
Target: p50 ratio <= 1.5x.

Run: .venv/bin/python bench/bench_session_append.py [--appends N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from session.store import SessionStore  # noqa: E402

PAYLOADS = [
    ("user", {"content": "please run the tests and fix what fails " * 3}),
    (
        "assistant",
        {
            "message": {
                "id": "msg_1",
                "model": "m",
                "content": [
                    {"type": "text", "text": "Running the tests."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "pytest -x -q"}},
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 1200, "output_tokens": 40},
            },
            "cost_usd": 0.004,
        },
    ),
    (
        "tool_result",
        {
            "tool_use_id": "toolu_1",
            "tool_name": "Bash",
            "content": "collected 42 items\n" + "." * 2000,
            "is_error": False,
            "output_blob": None,
            "output_bytes": 2020,
        },
    ),
]


def main() -> None:
    """Time appends and bare writes alternately; print p50s and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=600)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=arguments.dir) as directory:
        log = SessionStore(Path(directory) / "home").create(Path(directory))
        bare_fd = os.open(Path(directory) / "bare.jsonl", os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        append_times: list[float] = []
        bare_times: list[float] = []
        for n in range(arguments.appends):  # alternate A B A B
            kind, payload = PAYLOADS[n % len(PAYLOADS)]
            start = time.perf_counter()
            event = log.append(kind, payload)
            append_times.append(time.perf_counter() - start)
            line = event.to_json_line()  # the very bytes the append wrote
            start = time.perf_counter()
            os.write(bare_fd, line)
            os.fsync(bare_fd)
            bare_times.append(time.perf_counter() - start)
        os.close(bare_fd)
        log.close()
        append_p50 = statistics.median(append_times)
        bare_p50 = statistics.median(bare_times)
        ratio = append_p50 / bare_p50
        p99 = sorted(append_times)[int(len(append_times) * 0.99)]
        print(f"{arguments.appends} appends of ~0.3-2.3 KB lines in {directory}")
        print(f"SessionLog.append   p50 {append_p50 * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us")
        print(f"bare write + fsync  p50 {bare_p50 * 1e6:8.1f} us")
        print(f"ratio {ratio:.2f}x  (target <= 1.5x: {'ok' if ratio <= 1.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
