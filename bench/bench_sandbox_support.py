"""What the sandbox benchmarks share: a sandbox host subprocess, a client loop, percentiles.

Not a benchmark itself (``python bench/bench_sandbox_support.py`` says so). The
host runs as ``python -m remote_sandbox serve`` in its own process, as the
embedded host and a remote host do, so the client's and the host's Python never
share an event loop or a GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.common import ROOT, percentile, scratch

READY_PREFIX = "tether sandbox host listening on "
"""What the host prints once it accepts calls (remote_sandbox.cli.READY_LINE_PREFIX)."""

TEST_IMAGE = "tether-test:busybox"
"""The docker test image (tests/images/build.sh)."""

T = TypeVar("T")


@dataclass
class BenchHost:
    """A running host subprocess."""

    target: str
    """``grpc://127.0.0.1:PORT``."""
    token: str
    """A valid bearer token."""
    pid: int
    """The host process's pid (for /proc/PID/status)."""
    state_dir: Path
    """Its state dir."""


@contextlib.contextmanager
def host_process(
    provider: str = "local", *, image: str = "", extra_args: list[str] | None = None, unix_socket: bool = False
) -> Iterator[BenchHost]:
    """Run a sandbox host on ``127.0.0.1:0`` (or a unix socket, as the embedded host listens) with a fresh
    state dir; stop it and remove everything after."""
    work = scratch(f"host-{provider}")
    listen = f"unix://{work / 'host.sock'}" if unix_socket else "127.0.0.1:0"
    token = secrets.token_hex(16)
    token_file = work / "tokens"
    token_file.write_text(f"bench {token}\n")
    token_file.chmod(0o600)
    args = [
        sys.executable, "-m", "remote_sandbox", "serve", "--listen", listen, "--provider", provider,
        "--token-file", str(token_file), "--state-dir", str(work / "state"), "--log-level", "WARNING",
        *(["--default-image", image] if image else []), *(extra_args or []),
    ]  # fmt: skip
    with open(work / "host-stderr.log", "wb") as stderr:
        process = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if not line.startswith(READY_PREFIX):
            raise SystemExit(f"bench: the sandbox host did not start:\n{(work / 'host-stderr.log').read_text()}")
        address = line[len(READY_PREFIX) :]
        target = address if address.startswith("unix://") else f"grpc://{address}"
        yield BenchHost(target, token, process.pid, work / "state")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


class ClientLoop:
    """One event loop for the benchmark's client side, so timed calls can be plain functions."""

    def __init__(self) -> None:
        """Make the loop."""
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Awaitable[T]) -> T:
        """Run ``coroutine`` to its end on the loop."""
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        """Close the loop."""
        self.loop.close()


async def interleave_async(fns: list[Callable[[], object]], runs: int, warmup: int = 1) -> list[list[float]]:
    """Like ``bench.common.interleave`` (A B C A B C ...) inside one running loop; a coroutine result is awaited."""

    async def call(fn: Callable[[], object]) -> None:
        result = fn()
        if inspect.isawaitable(result):
            await result

    for _ in range(warmup):
        for fn in fns:
            await call(fn)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            await call(fn)
            times[i].append(time.perf_counter() - start)
    return times


async def alternate_async(
    a: Callable[[], Awaitable[object]], b: Callable[[], object], runs: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Like ``bench.common.alternate``, with A awaited inside one running loop (B is a plain call).

    The loop keeps running between calls, as it does in the harness: stopping
    and restarting it around every call would time that too.
    """
    for _ in range(warmup):
        await a()
        b()
    times_a, times_b = [], []
    for _ in range(runs):
        start = time.perf_counter()
        await a()
        times_a.append(time.perf_counter() - start)
        start = time.perf_counter()
        b()
        times_b.append(time.perf_counter() - start)
    return times_a, times_b


def percentiles(name: str, seconds: list[float]) -> str:
    """``name: p50 / p95 / p99 / max`` in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<44} p50 {percentile(ms, 50):8.3f}ms  p95 {percentile(ms, 95):8.3f}ms"
        f"  p99 {percentile(ms, 99):8.3f}ms  max {max(ms):8.3f}ms  (n={len(ms)})"
    )


def verdict(label: str, value: float, target: float, *, at_most: bool) -> str:
    """``label: value (target <= t): met`` or ``missed``."""
    met = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return f"{label}: {value:.3f}  (target {sign} {target:g}: {'met' if met else 'MISSED'})"


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


if __name__ == "__main__":
    print("bench_sandbox_support.py holds shared helpers; run bench_sandbox_exec.py, _files.py or _concurrency.py")
