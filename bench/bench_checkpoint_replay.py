"""Checkpoints of a 10,000-file workspace: the baseline's blobs in one batch against one
durable put each, and the state after 500 checkpoints replayed from a freshly loaded log
against a bare json.loads of the baseline's change list (the least a replay must do).

Run: .venv/bin/python bench/bench_checkpoint_replay.py [--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from session.blobs import BlobStore  # noqa: E402
from session.checkpoints import FileState, diff_states, record_checkpoint, state_at  # noqa: E402
from session.store import SessionStore  # noqa: E402

FILES = 10_000
CHECKPOINTS = 500
SINGLE_PUTS = 300  # one durable put each is slow: time a sample and scale it


def _state(n: int, content: bytes) -> FileState:
    return FileState(hashlib.sha256(content).hexdigest(), stat.S_IFREG | 0o644, len(content))


def bench_blobs(directory: Path) -> None:
    contents = [os.urandom(64) + b"%d" % n for n in range(FILES)]
    batched = BlobStore(directory / "batched")
    start = time.perf_counter()
    with batched.batch() as batch:
        for data in contents:
            batch.put(data)
    batch_seconds = time.perf_counter() - start
    single = BlobStore(directory / "single")
    start = time.perf_counter()
    for data in contents[:SINGLE_PUTS]:
        single.put(data)
    single_seconds = (time.perf_counter() - start) * FILES / SINGLE_PUTS
    print(
        f"{FILES} blobs: batch {batch_seconds:.2f} s, one put each ~{single_seconds:.2f} s "
        f"(x{single_seconds / batch_seconds:.1f})"
    )


def bench_replay(directory: Path, rounds: int) -> None:
    store = SessionStore(directory / "home")
    log = store.create(directory)
    state = {f"src/pkg_{n % 100}/module_{n}.py": _state(n, b"%d" % n) for n in range(FILES)}
    record_checkpoint(
        log, diff_states({}, state), seq=0, after_tool_use_id=None, label="baseline", files=FILES, bytes=0
    )
    for seq in range(1, CHECKPOINTS):
        log.append("user", {"content": f"prompt {seq}"})
        new = dict(state)
        for k in range(3):
            new[f"src/pkg_{k}/module_{seq * 3 + k}.py"] = _state(seq, b"edit %d %d" % (seq, k))
        new.pop(f"src/pkg_{seq % 100}/module_{seq + 5000}.py", None)
        record_checkpoint(
            log,
            diff_states(state, new),
            seq=seq,
            after_tool_use_id=f"toolu_{seq}",
            label="tool",
            files=len(new),
            bytes=0,
        )
        state = new
    log.close()
    baseline_blob = log.get_blob(log.events()[1].payload["changes_blob"])
    replays, loads = [], []
    for _ in range(rounds):
        fresh = store.open(log.session_id)
        start = time.perf_counter()
        replayed, _event = state_at(fresh)
        replays.append(time.perf_counter() - start)
        assert replayed == state
        start = time.perf_counter()
        orjson.loads(baseline_blob)
        loads.append(time.perf_counter() - start)
    replay, load = statistics.median(replays), statistics.median(loads)
    print(
        f"state_at after {CHECKPOINTS} checkpoints on {FILES} files: {replay * 1000:.1f} ms "
        f"(bare orjson.loads of the baseline {load * 1000:.1f} ms, x{replay / load:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        bench_blobs(Path(directory))
        bench_replay(Path(directory), arguments.rounds)


if __name__ == "__main__":
    main()
