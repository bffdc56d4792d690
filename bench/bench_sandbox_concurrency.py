"""32 concurrent sessions on one sandbox host (local provider): Exec latency percentiles and errors.

Each session is its own client (own channel, own sandbox) running Exec of `echo`; sessions are
spread over a few client processes, as real harnesses are separate processes. Three kinds of round,
alternated A B C A B C in one run on the same host:

A. 32 sessions, paced (the target): between two execs a session waits a think time drawn from an
   exponential distribution (seeded; mean --think-ms, default 1000 ms). An agent session waits for
   the model between tool calls: a real model's turn takes 2-10 s (first token, then the tool
   call's text), so one tool call per second per session is already faster than any session
   does. Try --think-ms 100 to see where the 2 cores here run out.
B. 32 sessions, back to back (for scale: saturation). With no pause the host is CPU-bound, and
   by Little's law the latency is sessions / throughput: on 2 cores this is a throughput figure,
   not a session latency.
C. 1 session alone, back to back (the baseline: the same call with no contention).

Target: zero errors, p99 <= 50 ms for A.

Run: .venv/bin/python bench/bench_sandbox_concurrency.py [--sessions 32] [--execs 50] [--rounds 2] [--processes 4] [--think-ms 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_sandbox_support import host_process, median, percentiles, verdict  # noqa: E402
from bench.common import ROOT, percentile  # noqa: E402

# One client process: SESSIONS sessions, each its own SandboxClient and sandbox, EXECS execs each;
# prints one JSON line: {"latencies": [...seconds], "errors": [...messages]}.
_WORKER = """
import asyncio, json, random, sys, time
from agent.sandbox_client import SandboxClient, SandboxError
from protos.recipes import load_recipe

target, token, sessions, execs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
think_s, seed = float(sys.argv[5]) / 1000, int(sys.argv[6])
latencies, errors = [], []

async def session(n, start):
    pause = random.Random(seed * 1000 + n)
    async with SandboxClient(target, token) as client:
        sandbox = await client.provision(load_recipe(None))
        await start.wait()
        for i in range(execs):
            if think_s:
                # The model's turn between two tool calls; the first one also spreads the starts.
                await asyncio.sleep(pause.expovariate(1 / think_s))
            begin = time.perf_counter()
            try:
                result = await client.exec(sandbox.sandbox_id, argv=["echo", f"{n}-{i}"])
                if result.exit_code != 0 or result.stdout != f"{n}-{i}\\n".encode():
                    errors.append(f"session {n} exec {i}: {result}")
            except SandboxError as exc:
                errors.append(f"session {n} exec {i}: {exc}")
            latencies.append(time.perf_counter() - begin)
        await client.destroy(sandbox.sandbox_id)

async def main():
    start = asyncio.Event()
    tasks = [asyncio.ensure_future(session(n, start)) for n in range(sessions)]
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()  # the parent says go once every worker has its sandboxes
    start.set()
    await asyncio.gather(*tasks)

asyncio.run(main())
print(json.dumps({"latencies": latencies, "errors": errors}))
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_round(
    target: str, token: str, sessions: int, execs: int, processes: int, think_ms: float = 0.0, seed: int = 0
) -> tuple[list[float], list[str]]:
    """Run ``sessions`` sessions over ``processes`` client processes at once; return latencies and errors.

    ``think_ms`` is the mean pause between a session's execs (0: back to back).
    """
    shares = [sessions // processes + (1 if i < sessions % processes else 0) for i in range(processes)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, target, token, str(share), str(execs), str(think_ms), str(seed * 100 + index)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for index, share in enumerate(shares)
        if share
    ]  # fmt: skip
    for worker in workers:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise SystemExit("bench: a client process failed to start")
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    latencies: list[float] = []
    errors: list[str] = []
    for worker in workers:
        out, _ = worker.communicate()
        report = json.loads(out.strip().splitlines()[-1])
        latencies += report["latencies"]
        errors += report["errors"]
    return latencies, errors


def main() -> None:
    """Alternate paced, saturated and single-session rounds; print percentiles, errors and verdicts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=32, help="concurrent sessions (default 32)")
    parser.add_argument("--execs", type=int, default=50, help="execs per session per round (default 50)")
    parser.add_argument("--rounds", type=int, default=2, help="A B C rounds (default 2)")
    parser.add_argument(
        "--processes", type=int, default=4, help="client processes the sessions are spread over (default 4)"
    )
    parser.add_argument(
        "--think-ms", type=float, default=1000.0, help="mean pause between a session's execs in A (default 1000)"
    )
    arguments = parser.parse_args()
    paced: list[float] = []
    saturated: list[float] = []
    alone: list[float] = []
    errors: list[str] = []
    walls, host_cpu = [], []
    sessions, execs, processes = arguments.sessions, arguments.execs, arguments.processes
    with host_process("local") as host:
        for round_number in range(arguments.rounds):
            latencies, failed = run_round(
                host.target, host.token, sessions, execs, processes, arguments.think_ms, round_number
            )
            paced += latencies
            errors += failed
            cpu, wall = cpu_seconds(host.pid), time.perf_counter()
            latencies, failed = run_round(host.target, host.token, sessions, execs, processes)
            walls.append(time.perf_counter() - wall)
            host_cpu.append(cpu_seconds(host.pid) - cpu)
            saturated += latencies
            errors += failed
            latencies, failed = run_round(host.target, host.token, 1, execs * 4, 1)
            alone += latencies
            errors += failed
    print(percentiles("C. 1 session alone: Exec echo", alone))
    offered = sessions * 1000 / arguments.think_ms if arguments.think_ms else float("inf")
    print(
        percentiles(f"A. {sessions} sessions, {arguments.think_ms:g} ms think", paced)
        + f"  (~{offered:.0f} execs/s asked)"
    )
    print(percentiles(f"B. {sessions} sessions, back to back", saturated))
    total = sessions * execs
    print(
        f"B per round ({total} execs, incl. provisioning): wall {median(walls):.2f} s,"
        f" host CPU {median(host_cpu) / total * 1000:.2f} ms per exec, {total / median(walls):.0f} execs/s"
    )
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:10]))
    print(
        f"p99 ratio A / C: {percentile(paced, 99) / percentile(alone, 99):.2f}; B / C: {percentile(saturated, 99) / percentile(alone, 99):.2f}"
    )
    print(verdict("errors", len(errors), 0, at_most=True))
    print(verdict(f"A. p99 ms, {sessions} sessions", percentile(paced, 99) * 1000, 50, at_most=True))


if __name__ == "__main__":
    main()
