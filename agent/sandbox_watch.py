"""Keeps an eye on the lease's host between tool calls: a light call every few seconds, its round trip
timed, and a ``SandboxState`` event when what the harness sees changes (a killed host shows at once,
not at the next tool call)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from agent import events as ev
from agent.lease import SandboxLease
from agent.sandbox_client import HostUnreachable, SandboxError, SandboxGone, SandboxNotRunning
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

HEARTBEAT_S = 5.0
"""Seconds between two looks at the host."""

HEARTBEAT_TIMEOUT_S = 5.0
"""A host that takes longer than this to answer is reported unreachable."""


class SandboxWatch:
    """Touches the lease's sandbox every ``interval`` seconds and reports its state and round-trip time."""

    def __init__(
        self,
        lease: SandboxLease,
        emit: Callable[[ev.AgentEvent], Awaitable[None]],
        *,
        interval: float = HEARTBEAT_S,
    ) -> None:
        """Watch ``lease``; events go to ``emit``."""
        self.lease = lease
        """The lease whose sandbox is watched."""
        self.emit = emit
        self.interval = interval
        """Seconds between two looks."""
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Begin watching in the background."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def look(self) -> ev.SandboxState:
        """One look at the host now: the state it shows, with the round trip when it answered."""
        lease = self.lease
        if lease.info is None or lease.state in ("starting", "lost", "restoring"):
            return ev.SandboxState(lease.state, lease.host)
        started = time.monotonic()
        try:
            info = await asyncio.wait_for(lease.client.touch(lease.sandbox_id), HEARTBEAT_TIMEOUT_S)
        except (SandboxGone, SandboxNotRunning) as exc:
            return ev.SandboxState("lost", lease.host, detail=str(exc))
        except (HostUnreachable, TimeoutError) as exc:
            return ev.SandboxState("unreachable", lease.host, detail=str(exc) or "the host did not answer in time")
        except SandboxError as exc:
            return ev.SandboxState("unreachable", lease.host, detail=str(exc))
        rtt = (time.monotonic() - started) * 1000
        if info.sandbox_id != lease.sandbox_id:
            return ev.SandboxState(lease.state, lease.host)  # replaced while we looked
        if info.state != pb.SandboxInfo.RUNNING:
            # Touch answers for a sandbox whose container or process died; it is as good as gone.
            return ev.SandboxState("lost", lease.host, detail="the sandbox is no longer running")
        return ev.SandboxState("ready", lease.host, rtt_ms=rtt)

    async def _run(self) -> None:
        while True:
            state = await self.look()
            self.lease.note_state(state.state, state.detail)
            await self.emit(state)
            await asyncio.sleep(self.interval)
