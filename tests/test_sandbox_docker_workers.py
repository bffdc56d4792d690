"""The docker provider's resident workers, against a real engine: reuse, recovery, bounds.

Commands run on resident worker shells in the container (see
remote_sandbox/providers/docker.py). These tests check what that must not change:
nothing piles up over many commands, a command may kill workers without breaking the
sandbox, and a script shorter than the last one runs as written.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from remote_sandbox.providers.base import SandboxRecord
from remote_sandbox.providers.docker import MAX_IDLE_WORKERS, DockerProvider
from tests.fixtures.docker_provider import collect, processes, shell

pytestmark = pytest.mark.docker

WORKERS = "ps -o pid,ppid,args | awk '$2 == 1 && /server.sh/ {print $1}'"
"""Pids of the workers: forks of the exec server, reparented to pid 1 (the server's parent is outside, 0)."""


async def worker_pids(provider: DockerProvider, record: SandboxRecord) -> list[str]:
    """The pids of the sandbox's workers, the one running this listing included."""
    return (await collect(provider, record, shell(WORKERS))).stdout.decode().split()


async def test_sequential_commands_reuse_one_worker_and_leave_nothing(
    sandbox: SandboxRecord, provider: DockerProvider
) -> None:
    before = await processes(provider, sandbox)
    for i in range(30):
        outcome = await collect(provider, sandbox, shell(f"echo {i}"))
        assert outcome.stdout == f"{i}\n".encode() and outcome.exited.exit_code == 0
    after = await processes(provider, sandbox)
    assert after.count("\n") == before.count("\n"), (before, after)
    assert len(await worker_pids(provider, sandbox)) == 1


async def test_idle_workers_are_bounded_after_a_burst(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    # Each waits for all the others' files, so they finish only if all run at once.
    count = MAX_IDLE_WORKERS + 3
    specs = [
        shell(f"touch /tmp/b{i}; while [ $(ls /tmp | grep -c '^b') -lt {count} ]; do :; done; echo {i}", timeout_s=30)
        for i in range(count)
    ]
    outcomes = await asyncio.gather(*(collect(provider, sandbox, spec) for spec in specs))
    assert [o.stdout for o in outcomes] == [f"{i}\n".encode() for i in range(count)]
    # The extra workers were told to quit; they exit on their own, soon after. Wait for that, bounded.
    deadline = time.monotonic() + 20
    while len(workers := await worker_pids(provider, sandbox)) > MAX_IDLE_WORKERS:
        assert time.monotonic() < deadline, workers


async def test_a_command_that_kills_its_worker_ends_and_the_sandbox_goes_on(
    sandbox: SandboxRecord, provider: DockerProvider
) -> None:
    # The command's parent is its worker; without it nobody reports the exit, so the
    # host must notice the worker is gone and end the group rather than wait out the timeout.
    outcome = await collect(provider, sandbox, shell("echo before; kill -9 $PPID; sleep 1011", timeout_s=60))
    assert outcome.stdout == b"before\n"
    assert not outcome.exited.timed_out
    assert "sleep 1011" not in await processes(provider, sandbox)
    after = await collect(provider, sandbox, shell("echo after"))
    assert after.stdout == b"after\n" and after.exited.exit_code == 0


async def test_idle_workers_killed_by_a_command_are_replaced(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    # Three at once leave three idle workers.
    specs = [shell(f"touch /tmp/k{i}; while [ $(ls /tmp | grep -c '^k') -lt 3 ]; do :; done") for i in range(3)]
    await asyncio.gather(*(collect(provider, sandbox, spec) for spec in specs))
    killer = f"for p in $({WORKERS}); do [ $p = $PPID ] || kill -9 $p; done; echo killed"
    assert (await collect(provider, sandbox, shell(killer))).stdout == b"killed\n"
    # SIGKILL lands asynchronously; a worker handed a command while it dies loses that
    # command's exit code (reported as -1). Here: wait until they are gone, bounded.
    deadline = time.monotonic() + 20
    while len(workers := await worker_pids(provider, sandbox)) > 1:
        assert time.monotonic() < deadline, workers
    outcomes = await asyncio.gather(*(collect(provider, sandbox, shell(f"echo {i}")) for i in range(3)))
    assert [(o.stdout, o.exited.exit_code) for o in outcomes] == [(f"{i}\n".encode(), 0) for i in range(3)]


async def test_a_shorter_script_after_a_longer_one_runs_as_written(
    sandbox: SandboxRecord, provider: DockerProvider
) -> None:
    # A worker's script file is rewritten in place for each command.
    long = await collect(provider, sandbox, shell("echo long; : " + "x" * 4000, env={"PAD": "y" * 3000}))
    assert long.stdout == b"long\n"
    short = await collect(provider, sandbox, shell("echo $PAD short"))
    assert short.stdout == b"short\n" and short.exited.exit_code == 0
    longer = await collect(provider, sandbox, shell("echo longer; : " + "z" * 6000))
    assert longer.stdout == b"longer\n"
