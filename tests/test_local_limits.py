"""Local sandboxes under real limits: a fork bomb and a 64 GB allocation stay inside their sandbox.

The bounds are the recipe's (pids 64, 256 MiB, half a core), enforced by the
sandbox's cgroup; each test first checks that ``GetSandbox`` says they hold, and
skips rather than run the load on a host where they would not (this machine would
be the one to suffer).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.sandbox_client import SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.providers.local import LocalProvider
from remote_sandbox.providers.local.limits import LimitPlan
from tests.fixtures.sandbox_host import RunningHost

PIDS = 64
MEMORY = 256 << 20


@pytest.fixture
async def limited(local_sandbox_host: RunningHost) -> AsyncIterator[tuple[SandboxClient, pb.SandboxInfo]]:
    """A client and a local sandbox with small pids, memory and cpu limits."""
    recipe = pb.Recipe()
    recipe.CopyFrom(local_sandbox_host.recipe)
    recipe.limits.CopyFrom(pb.Limits(pids=PIDS, memory_bytes=MEMORY, cpus=0.5))
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        info = await client.provision(recipe)
        yield client, info
        await client.destroy(info.sandbox_id)


def cgroup_dir(host: RunningHost, sandbox_id: str, controller: str) -> Path:
    """The sandbox's cgroup directory of ``controller``, as the host made it."""
    assert host.host is not None and isinstance(host.host.provider, LocalProvider)
    parent = host.host.provider.limits.parents[controller]
    cgroup = host.host.sandboxes[sandbox_id].record.handle.cgroup  # type: ignore[attr-defined]
    (directory,) = [d for d in cgroup.dirs if d.parent == parent]
    return directory


def test_the_description_says_exactly_which_limits_hold() -> None:
    limits = pb.Limits(pids=10, memory_bytes=1 << 30, cpus=1.5)
    v1 = LimitPlan("cgroup v1", {"pids": Path("/x"), "memory": Path("/y")})
    assert v1.describe(limits) == "pids <= 10, memory <= 1 GiB (cgroup v1); no cpu limit"
    assert LimitPlan("rlimit").describe(limits) == (
        "memory <= 1 GiB per process (RLIMIT_AS, not per sandbox) (rlimit); no pids/cpu limit"
    )
    assert LimitPlan("rlimit").describe(pb.Limits()) == "no pids/memory/cpu limit"


async def test_a_fork_bomb_is_bounded_by_the_pids_limit(
    limited: tuple[SandboxClient, pb.SandboxInfo], local_sandbox_host: RunningHost
) -> None:
    client, info = limited
    if f"pids <= {PIDS}" not in info.isolation:
        pytest.skip(f"no pids limit holds here: {info.isolation}")
    started = time.monotonic()
    bomb = await client.exec(info.sandbox_id, shell="f() { f | f & }; f; sleep 60", timeout_ms=3000)
    assert bomb.timed_out
    # The bomb hit its ceiling: the kernel refused forks past it (counted in pids.events).
    events = (cgroup_dir(local_sandbox_host, info.sandbox_id, "pids") / "pids.events").read_text()
    assert int(events.split()[-1]) > 0, events
    # The host answers, and the sandbox runs its next command.
    after = await client.exec(info.sandbox_id, shell="echo still here")
    assert (after.exit_code, after.stdout) == (0, b"still here\n")
    assert time.monotonic() - started < 60


async def test_a_64_gb_allocation_is_bounded_by_the_memory_limit(limited: tuple[SandboxClient, pb.SandboxInfo]) -> None:
    client, info = limited
    if "memory <= 256 MiB," not in info.isolation or "(cgroup" not in info.isolation:
        pytest.skip(f"no per-sandbox memory limit holds here: {info.isolation}")
    # 64 GiB in 64 MiB pieces, each written: only a limit stops it before the machine runs out.
    hog = "a = []\nfor _ in range(1024):\n    a.append(b'x' * (64 << 20))\nprint('allocated 64 GiB')"
    result = await client.exec(info.sandbox_id, argv=["python3", "-c", hog], timeout_ms=60_000)
    assert b"allocated" not in result.stdout
    assert (result.exit_code, result.signal) == (-1, 9), result  # the OOM killer, inside the sandbox
    assert not result.timed_out
    after = await client.exec(info.sandbox_id, shell="echo still here")
    assert (after.exit_code, after.stdout) == (0, b"still here\n")


async def test_destroy_removes_the_sandbox_cgroup(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        info = await client.provision(local_sandbox_host.recipe)
        if "(cgroup" not in info.isolation:
            pytest.skip(f"no cgroup here: {info.isolation}")
        directory = cgroup_dir(local_sandbox_host, info.sandbox_id, "pids")
        await client.exec(info.sandbox_id, shell="setsid sleep 1000 >/dev/null 2>&1 &")
        assert (directory / "cgroup.procs").read_text().split(), "the launcher and the escaped sleep are in it"
        await client.destroy(info.sandbox_id)
    assert not directory.exists()
