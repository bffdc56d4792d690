"""The headless driver: ``tether -p PROMPT``, printing text, one JSON result, or a JSON event stream."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import time
from typing import TextIO

from agent import events as ev
from agent.harness import Harness, HarnessError, HarnessOptions
from agent.loop import result_json
from agent.sandbox_client import SandboxError

OUTPUT_FORMATS = ("text", "json", "stream-json")


class HeadlessPrinter:
    """Turns loop events into the chosen output format."""

    def __init__(self, output_format: str, out: TextIO, err: TextIO) -> None:
        self.output_format = output_format
        self.out = out
        self.err = err

    async def __call__(self, event: ev.AgentEvent) -> None:
        """Handle one event from the loop."""
        if isinstance(event, ev.PermissionRequest):
            # Nobody can answer headless: the mode decides, and an open question is a no.
            if not event.future.done():
                event.future.set_result(ev.PermissionDecision(allow=False, reason="No one is there to approve it (headless run)."))
        if self.output_format == "stream-json":
            self._line(_event_dict(event))
        elif isinstance(event, ev.Status):
            print(f"tether: {event.message}", file=self.err, flush=True)
        elif isinstance(event, ev.ErrorEvent) and self.output_format == "text":
            print(f"tether: {event.message}", file=self.err, flush=True)

    def _line(self, obj: dict) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()


def _event_dict(event: ev.AgentEvent) -> dict:
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name != "future"}
    return {"type": event.kind, **fields}


async def run_headless(options: HarnessOptions, prompt: str, output_format: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run one prompt to completion; return the process exit code."""
    started = time.monotonic()
    printer = HeadlessPrinter(output_format, out, err)
    harness = Harness(options, printer)
    try:
        try:
            await harness.start()
        except (HarnessError, SandboxError) as exc:
            return report_error(str(exc), output_format, out, err, started=started, harness=harness)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, harness.interrupt)
        try:
            done = await harness.run(prompt)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        duration_ms = int((time.monotonic() - started) * 1000)
        assert harness.loop is not None
        if output_format == "text":
            if done.result:
                print(done.result, file=out if not done.is_error else err, flush=True)
        else:
            out.write(result_json(done, session_id=harness.session_id, duration_ms=duration_ms, totals=harness.loop.totals) + "\n")
            out.flush()
        return 1 if done.is_error else 0
    finally:
        await asyncio.shield(harness.close())


def report_error(
    message: str, output_format: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr, *, started: float | None = None, harness: Harness | None = None
) -> int:
    """Report a run that failed before its first answer, in the chosen format; return the exit code (1)."""
    if output_format == "text":
        print(message if message.startswith("tether:") else f"tether: {message}", file=err, flush=True)
    else:
        _print_json(out, _error_result(message, time.monotonic() if started is None else started, harness))
    return 1


def _error_result(message: str, started: float, harness: Harness | None) -> dict:
    return {
        "type": "result",
        "subtype": "error",
        "is_error": True,
        "result": message,
        "session_id": harness.log.session_id if harness is not None and harness.log is not None else None,
        "num_turns": 0,
        "duration_ms": int((time.monotonic() - started) * 1000),
        "usage": {},
        "total_cost_usd": 0.0,
    }


def _print_json(out: TextIO, obj: dict) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()
