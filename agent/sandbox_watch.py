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
from agent.options import HEARTBEAT_S
from agent.sandbox_client import HostUnreachable, SandboxError, SandboxGone, SandboxNotRunning
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

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
        self._refused = False
        """Whether the last look found the host refusing or closing connections (not just slow)."""

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
        self._refused = False
        if lease.info is None or lease.state in ("starting", "lost", "restoring") or lease.recoveries:
            # Being replaced, or the lease is looking for a host itself (and says so): nothing to add.
            return ev.SandboxState(lease.state, lease.host)
        started = time.monotonic()
        try:
            info = await asyncio.wait_for(lease.client.touch(lease.sandbox_id), HEARTBEAT_TIMEOUT_S)
        except (SandboxGone, SandboxNotRunning) as exc:
            return ev.SandboxState("lost", lease.host, detail=str(exc))
        except HostUnreachable as exc:
            self._refused = not exc.silent
            return ev.SandboxState("unreachable", lease.host, detail=str(exc))
        except TimeoutError:
            return ev.SandboxState("unreachable", lease.host, detail="the host did not answer in time")
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
            lease = self.lease
            client, was = lease.client, lease.state
            state = await self.look()
            lease.note_state(state.state, state.detail)
            await self.emit(state)
            if state.state == "lost" and was == "ready" and lease.info is not None:
                lease.begin_replace(state.detail, lease.info.sandbox_id)  # ready before the next tool call
            elif state.state == "unreachable" and was == "ready" and self._refused:
                # The host closed or refused the connection (it died, or restarts): reconnect or fail
                # over now, between tool calls, rather than at the next one. A host that is merely slow
                # is left to keepalive, which tells a silent host from a busy one.
                recovery = asyncio.ensure_future(lease.recover(state.detail, lost=client))
                recovery.add_done_callback(_observe)
            await asyncio.sleep(self.interval)


def _observe(task: asyncio.Task) -> None:
    """A background recovery's failure is the lease's to report (it sends notices); mark it seen."""
    if not task.cancelled():
        task.exception()
