"""The one exec loop: deadline, drain, output cap, ``Started``/``Output``/``Exited``, and clean-up of abandoned commands."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, Protocol

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.execution.request import BATCH_HOLD_S, BATCH_MAX_BYTES, DRAIN_AFTER_EXIT_S
from remote_sandbox.execution.status import ExitStatus
from remote_sandbox.execution.stream import EventBuffer
from remote_sandbox.output_cap import OutputCap
from remote_sandbox.providers.base import ExecSpec

OUTPUT_STREAMS = {"out": pb.Output.STDOUT, "err": pb.Output.STDERR}
"""The buffer's output streams and their ``Output.stream``."""


class RunningCommand(Protocol):
    """One command as a provider runs it; the shared loop drives it."""

    events: EventBuffer
    """Its output chunks and EOFs (``out``, ``err``), and the provider's own notices, in arrival order."""
    pid: int
    """The leader's pid as the sandbox sees it (also its group id); 0 if never known."""
    kill_group_on_exit: bool
    """End the rest of the group as soon as the leader exits (local), or let it run while it holds no output (docker)."""

    async def start(self, deadline: float | None) -> bool:
        """Start the command; False if nothing ran because ``deadline`` passed first."""
        ...

    async def notice(self, stream: str, data: bytes | None) -> None:
        """Act on an item of a stream other than ``out``/``err`` (an exit report, a control line)."""
        ...

    @property
    def ended(self) -> bool:
        """Whether the leader has exited (or is known to be gone)."""
        ...

    def status(self) -> ExitStatus:
        """How the leader ended (once ``ended``)."""
        ...

    def end_group(self) -> None:
        """The leader exited: kill whatever is left of its group now (only when ``kill_group_on_exit``)."""
        ...

    async def kill(self) -> None:
        """Kill the whole group and wait, bounded, until the leader is gone; output read meanwhile stays buffered."""
        ...

    def final_cwd(self) -> str:
        """The shell's final directory when it was asked for and is known, else empty."""
        ...

    async def finish(self) -> None:
        """Settle after the loop has ended (restart what the command broke, say); may raise a ProviderError."""
        ...

    def close(self) -> None:
        """Release everything of a command that ran to its end."""
        ...

    async def abandon(self) -> None:
        """Kill and release a command whose consumer went away; runs shielded from cancellation."""
        ...


class Cleanups:
    """Clean-ups of abandoned commands, run to their end even when the task awaiting them is cancelled."""

    def __init__(self) -> None:
        """None pending."""
        self._pending: set[asyncio.Future[None]] = set()

    async def shielded(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Run ``cleanup`` to its end whatever happens to the caller; wait for it unless cancelled."""
        task = asyncio.ensure_future(cleanup)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def wait(self) -> None:
        """Wait for every pending clean-up (a provider closing)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


class _Held:
    """A command's first events, held back to go out as one ``ExecEvent`` (its ``following``) when batching."""

    def __init__(self, batch: bool, first: pb.ExecEvent) -> None:
        """Hold ``first`` (Started) if ``batch``, else nothing: every event goes out at once."""
        self.first = first
        """The event the others follow."""
        self.events: list[pb.ExecEvent] = [first] if batch else []
        """Held events, in order; empty once flushed (or when not batching)."""
        self._bytes = 0

    def add(self, event: pb.ExecEvent, size: int) -> bool:
        """Hold one more event of ``size`` output bytes; True when enough is held that it should go now."""
        self.events.append(event)
        self._bytes += size
        return self._bytes >= BATCH_MAX_BYTES

    def flush(self) -> pb.ExecEvent:
        """The held events as one, holding nothing from now on."""
        first, *rest = self.events
        first.following.extend(rest)
        self.events = []
        return first

    def last(self, event: pb.ExecEvent) -> list[pb.ExecEvent]:
        """What is left to send when ``event`` (Exited) ends the stream."""
        if not self.events:
            return [event]
        self.events.append(event)
        return [self.flush()]


def _earlier(deadline: float | None, other: float) -> float:
    """The earlier of a deadline (None: never) and ``other``."""
    return other if deadline is None else min(deadline, other)


def output_event(stream: str, data: bytes) -> pb.ExecEvent:
    """An Output event for ``out`` or ``err`` bytes."""
    return pb.ExecEvent(output=pb.Output(stream=OUTPUT_STREAMS[stream], data=data))


async def run_command(
    command: RunningCommand, spec: ExecSpec, spill_file: Path, spill_mount: str, cleanups: Cleanups
) -> AsyncIterator[pb.ExecEvent]:
    """Run ``command`` to its end: yield Started, Output..., Exited; kill its group if the consumer goes away.

    ``spill_file`` is the host path output past the cap goes to, ``spill_mount`` its
    directory as the sandbox sees it.
    """
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    deadline = started_at + spec.timeout_s if spec.timeout_s > 0 else None
    cap = OutputCap(spec.output_cap, spill_file)
    finished = False
    try:
        if not await command.start(deadline):
            # No way to start it in time (a pids limit exhausted, say): nothing ran.
            held = _Held(spec.batch_events, pb.ExecEvent(started=pb.Started(pid=0)))
            if not held.events:
                yield held.first
            finished = True
            duration_ms = int((loop.time() - started_at) * 1000)
            exited = pb.ExecEvent(exited=pb.Exited(exit_code=-1, timed_out=True, duration_ms=duration_ms))
            for event in held.last(exited):
                yield event
            return
        held = _Held(spec.batch_events, pb.ExecEvent(started=pb.Started(pid=command.pid)))
        if not held.events:
            yield held.first
        hold_until = loop.time() + BATCH_HOLD_S
        events = command.events
        open_streams = {"out", "err"}
        timed_out = draining = killed_running = False
        while open_streams or not command.ended:
            item = await events.get(deadline if not held.events else _earlier(deadline, hold_until))
            if item is None and held.events:
                # The hold is over (or the deadline came first): what is held goes now, then on as usual.
                yield held.flush()
                continue
            if item is None:
                if draining:
                    break  # only output held by processes that left the group is left: stop waiting
                timed_out = draining = True
                killed_running |= not command.ended
                await command.kill()
                deadline = loop.time() + DRAIN_AFTER_EXIT_S
                continue
            stream, data = item
            if stream in OUTPUT_STREAMS:
                if data is None:
                    open_streams.discard(stream)
                elif head := cap.take(stream, data):
                    if not held.events:
                        yield output_event(stream, head)
                    elif held.add(output_event(stream, head), len(head)):
                        yield held.flush()
                continue
            await command.notice(stream, data)
            if command.ended and command.kill_group_on_exit and not draining:
                # The command is done; whatever it left behind in its group goes too.
                command.end_group()
                draining = True
                drain_until = loop.time() + DRAIN_AFTER_EXIT_S
                deadline = drain_until if deadline is None else min(deadline, drain_until)
        if command.kill_group_on_exit and not draining:
            command.end_group()  # the streams ended before the exit notice was read: same rule
        cap.close()
        await command.finish()
        # A leader that had exited before the deadline keeps its own status; one the timeout killed got SIGKILL.
        status = ExitStatus(-1, signal.SIGKILL) if killed_running else command.status()
        finished = True
        exited = pb.ExecEvent(
            exited=pb.Exited(
                exit_code=status.exit_code,
                signal=status.signal,
                status_exact=status.exact,
                timed_out=timed_out,
                truncated=cap.truncated,
                spill_path=f"{spill_mount}/{spill_file.name}" if cap.truncated else "",
                stdout_bytes=cap.counts["out"],
                stderr_bytes=cap.counts["err"],
                cwd=command.final_cwd() if spec.report_cwd and spec.shell is not None else "",
                duration_ms=int((loop.time() - started_at) * 1000),
            )
        )
        for event in held.last(exited):
            yield event
    finally:
        cap.close()
        if finished:
            command.close()
        else:
            # The consumer went away (aclose, cancelled RPC) or something failed:
            # the whole group dies before this returns, even if this task is cancelled again.
            await cleanups.shielded(command.abandon())
