"""Exec's batched events: a short command's Started, Output and Exited come in one gRPC message.

Real host, real gRPC, once per provider. The raw stub shows the messages as
they travel; ``SandboxClient.exec_stream`` must give the same events, one by
one, whichever way they came.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from agent.sandbox_client import SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.execution import loop as loop_module
from remote_sandbox.execution.loop import _Held
from remote_sandbox.execution.request import BATCH_MAX_BYTES
from tests.fixtures.sandbox_host import RunningHost

WAIT_S = 15.0
"""Bound on every call."""


@pytest.fixture
async def running(sandbox_host: RunningHost) -> AsyncIterator[tuple[SandboxClient, str, tuple[tuple[str, str]]]]:
    """A client, one of its sandboxes, and the metadata of a raw call."""
    async with SandboxClient(sandbox_host.target, sandbox_host.token) as client:
        info = await client.provision(sandbox_host.recipe)
        yield client, info.sandbox_id, (("authorization", f"Bearer {sandbox_host.token}"),)


def kinds(message: pb.ExecEvent) -> list[str]:
    """The events one message carries, in order."""
    return [str(e.WhichOneof("event")) for e in [message, *message.following]]


async def messages(client: SandboxClient, request: pb.ExecRequest, metadata: object) -> list[pb.ExecEvent]:
    """Every message of one raw Exec call."""
    return [m async for m in client.stub.Exec(request, metadata=metadata, timeout=WAIT_S)]


async def test_a_short_command_comes_in_one_message(
    running: tuple[SandboxClient, str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hold far longer than the command, so a loaded machine cannot split the message:
    # what ends it is the command's exit, not the hold's.
    monkeypatch.setattr(loop_module, "BATCH_HOLD_S", WAIT_S)
    client, sandbox_id, metadata = running
    request = pb.ExecRequest(sandbox_id=sandbox_id, shell="echo out; echo err >&2; exit 3", batch_events=True)
    (only,) = await messages(client, request, metadata)
    assert kinds(only)[0] == "started" and kinds(only)[-1] == "exited"
    assert set(kinds(only)[1:-1]) == {"output"}
    assert only.following[-1].exited.exit_code == 3
    assert only.started.pid > 0, "a command that ended at once still has its pid told"
    flat = [e async for e in client.exec_stream(sandbox_id, shell="echo out; echo err >&2; exit 3")]
    assert [e.WhichOneof("event") for e in flat] == kinds(only)
    outputs = {(e.output.stream, e.output.data) for e in flat if e.HasField("output")}
    assert outputs == {(pb.Output.STDOUT, b"out\n"), (pb.Output.STDERR, b"err\n")}


async def test_a_client_that_does_not_ask_gets_one_event_per_message(
    running: tuple[SandboxClient, str, object],
) -> None:
    client, sandbox_id, metadata = running
    request = pb.ExecRequest(sandbox_id=sandbox_id, shell="echo out")
    got = await messages(client, request, metadata)
    assert [kinds(m) for m in got] == [["started"], ["output"], ["exited"]]


async def test_a_long_command_starts_before_it_ends(running: tuple[SandboxClient, str, object]) -> None:
    client, sandbox_id, metadata = running
    request = pb.ExecRequest(sandbox_id=sandbox_id, shell="echo first; exec sleep 60", batch_events=True)
    call = client.stub.Exec(request, metadata=metadata, timeout=WAIT_S)
    try:
        first = await call.read()
        assert isinstance(first, pb.ExecEvent)
        # Held only briefly: the command still runs, and what it printed so far came along.
        assert kinds(first)[0] == "started" and "exited" not in kinds(first)
        printed = b"".join(e.output.data for e in first.following)
        if not printed:
            second = await call.read()
            assert isinstance(second, pb.ExecEvent)
            printed = second.output.data
        assert printed == b"first\n"
    finally:
        call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_the_headers_come_while_the_command_runs(
    running: tuple[SandboxClient, str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing is held back for long here: before the command ends, only the headers can reach the client.
    monkeypatch.setattr(loop_module, "BATCH_HOLD_S", WAIT_S)
    client, sandbox_id, metadata = running
    assert (await client.exec(sandbox_id, shell="mkfifo gate")).exit_code == 0
    request = pb.ExecRequest(sandbox_id=sandbox_id, shell="read line < gate; echo $line", batch_events=True)
    call = client.stub.Exec(request, metadata=metadata, timeout=WAIT_S)
    try:
        # Sent with the first message, the headers would wait for the command, which waits for the gate.
        await asyncio.wait_for(call.initial_metadata(), WAIT_S)
        assert (await client.exec(sandbox_id, shell="echo open > gate")).exit_code == 0
        only = await call.read()
        assert isinstance(only, pb.ExecEvent)
        assert kinds(only)[0] == "started" and kinds(only)[-1] == "exited"
        assert b"".join(e.output.data for e in only.following) == b"open\n"
        assert only.following[-1].exited.exit_code == 0
    finally:
        call.cancel()


def test_held_output_goes_out_once_it_is_large() -> None:
    held = _Held(True, pb.ExecEvent(started=pb.Started(pid=1)))
    chunk = b"x" * (BATCH_MAX_BYTES // 2)
    assert not held.add(pb.ExecEvent(output=pb.Output(data=chunk)), len(chunk))
    assert held.add(pb.ExecEvent(output=pb.Output(data=chunk)), len(chunk))
    event = held.flush()
    assert kinds(event) == ["started", "output", "output"]
    assert held.last(pb.ExecEvent(exited=pb.Exited())) == [pb.ExecEvent(exited=pb.Exited())]
