"""Exited tells a command that chose a code past 128 (``exit 130``) from one a signal killed, on both providers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.sandbox_client import SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from tests.fixtures.sandbox_host import RunningHost


@pytest.fixture
async def running(sandbox_host: RunningHost) -> AsyncIterator[tuple[SandboxClient, str]]:
    """A client and a fresh sandbox on each provider."""
    async with SandboxClient(sandbox_host.target, sandbox_host.token) as client:
        info = await client.provision(sandbox_host.recipe)
        yield client, info.sandbox_id
        await client.destroy(info.sandbox_id)


async def exited(client: SandboxClient, sandbox_id: str, **command: object) -> pb.Exited:
    """The Exited event of one command."""
    last = None
    async for event in client.exec_stream(sandbox_id, **command):  # type: ignore[arg-type]
        if event.HasField("exited"):
            last = event.exited
    assert last is not None
    return last


async def test_an_explicit_exit_past_128_is_a_code_not_a_signal(running: tuple[SandboxClient, str]) -> None:
    client, sandbox_id = running
    end = await exited(client, sandbox_id, shell="echo bye; exit 130")
    assert (end.exit_code, end.signal, end.status_exact) == (130, 0, True)
    end = await exited(client, sandbox_id, shell="exit 137")
    assert (end.exit_code, end.signal, end.status_exact) == (137, 0, True)


async def test_a_shell_killed_by_a_signal_reports_the_signal(running: tuple[SandboxClient, str]) -> None:
    client, sandbox_id = running
    end = await exited(client, sandbox_id, shell="kill -TERM $$; sleep 5")
    assert (end.exit_code, end.signal) == (-1, 15)
    end = await exited(client, sandbox_id, shell="kill -9 $$")
    assert (end.exit_code, end.signal) == (-1, 9)


async def test_small_codes_and_timeouts_are_exact(running: tuple[SandboxClient, str]) -> None:
    client, sandbox_id = running
    end = await exited(client, sandbox_id, shell="exit 3")
    assert (end.exit_code, end.signal, end.status_exact) == (3, 0, True)
    end = await exited(client, sandbox_id, shell="sleep 30", timeout_ms=300)
    assert (end.exit_code, end.signal, end.timed_out, end.status_exact) == (-1, 9, True, True)


async def test_an_argv_command_past_128(running: tuple[SandboxClient, str], sandbox_host: RunningHost) -> None:
    client, sandbox_id = running
    end = await exited(client, sandbox_id, argv=["sh", "-c", "exit 130"])
    if sandbox_host.provider == "local":
        # The launcher holds the leader's own wait status.
        assert (end.exit_code, end.signal, end.status_exact) == (130, 0, True)
    else:
        # In a container only a shell's $? is seen: the signal is inferred, and says so.
        assert (end.exit_code, end.signal, end.status_exact) == (-1, 2, False)
