"""What an Exec request must be before any provider runs it, and the constants both providers share."""

from __future__ import annotations

import re

from remote_sandbox.providers.base import SPILL_MOUNT, ExecSpec, InvalidRequest

__all__ = [
    "BATCH_HOLD_S",
    "BATCH_MAX_BYTES",
    "DRAIN_AFTER_EXIT_S",
    "QUEUE_HIGH_WATER",
    "SETUP_TIMEOUT_S",
    "SPILL_MOUNT",
    "validate",
]

SETUP_TIMEOUT_S = 600.0
"""Wall-clock limit of each recipe setup command."""

DRAIN_AFTER_EXIT_S = 2.0
"""After a kill, how long output held open by processes that left the group is still read."""

BATCH_HOLD_S = 0.010
"""With ``batch_events``, how long a command's first events are held to go out together: a command done
by then costs one gRPC message, not one per event (each costs both ends a few hundred microseconds)."""

BATCH_MAX_BYTES = 64 * 1024
"""Held output past this many bytes goes out at once, hold or not."""

QUEUE_HIGH_WATER = 64
"""Output chunks buffered per command before reading its pipes pauses (back-pressure up to the gRPC stream)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def validate(spec: ExecSpec) -> None:
    """Reject a spec no shell could run as asked."""
    if (spec.shell is None) == (spec.argv is None):
        raise InvalidRequest("a command needs exactly one of argv or shell")
    if spec.argv is not None and not spec.argv:
        raise InvalidRequest("argv is empty: name a program to run")
    for name, value in spec.env.items():
        if not _ENV_NAME.match(name):
            raise InvalidRequest(f"environment variable name {name!r} is not valid in a shell")
        if "\0" in value:
            raise InvalidRequest(f"environment variable {name} contains a NUL byte")
    if any("\0" in text for text in [spec.cwd, spec.shell or "", *(spec.argv or [])]):
        raise InvalidRequest("the command or its directory contains a NUL byte")
