"""The resident harness: a warm process that forks one child per ``tether -p`` run.

Importing the ``anthropic`` SDK costs 1.5-4 s on these machines, longer than a
whole one-answer run of other agents. So the first ``tether -p`` (which runs
in-process) starts this process as it exits; it imports everything
once, keeps an embedded sandbox host running, and listens on a private unix
socket. Each later ``tether -p`` is a thin client: it connects, hands over its
stdin, stdout and stderr (as file descriptors), its argv, working directory
and environment, and the resident process forks a child that runs exactly
what ``tether -p`` runs in-process, with that environment. The client forwards
signals to the child and exits with its exit code.

Forking is safe because this process never starts a thread or an event loop:
it only imports, accepts and forks. The socket's directory is 0700 and peers
must be the same user. The socket's name carries a hash of the code (this
checkout's files, the interpreter's real path and version, the SDK's
directory), never of how the interpreter's path was spelled, so ``python``
and ``python3`` share one; an upgrade starts a new one, and an idle one exits
on its own. ``TETHER_RESIDENT=0`` turns it off; ``tether resident status|stop``
shows and stops them.

This package (``server`` aside) imports only the standard library: it runs
before anything else in every ``tether -p``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

IDLE_EXIT_S = 900.0
"""A resident process with no run for this long exits."""

SOCKET_GLOB = "harness-*.sock"
"""What every resident process's socket in the runtime dir is named like."""

_ROOT = Path(__file__).resolve().parent.parent.parent
_CODE_DIRS = ("agent", "session", "protos", "remote_sandbox", "tui")
_PACKAGES = ("anthropic", "grpc")
"""Installed packages whose directory (path and mtime) is part of the code version."""


class ResidentUnavailable(Exception):
    """The resident process could not be reached or started; run in-process instead."""


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether ``tether -p`` should go through the resident process."""
    env = os.environ if environ is None else environ
    return env.get("TETHER_RESIDENT", "1") not in ("0", "false", "no", "off")


def runtime_dir() -> Path:
    """A private (0700, ours) directory for the socket: ``TETHER_RUNTIME_DIR``, the XDG runtime dir, or /tmp."""
    base = os.environ.get("TETHER_RUNTIME_DIR")
    if base:
        path = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "tether"
    else:
        path = Path("/tmp") / f"tether-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ResidentUnavailable(f"{path} is not private to this user (mode {oct(info.st_mode & 0o777)})")
    return path


def code_root() -> Path:
    """The checkout whose code a resident process runs (resolved)."""
    return _ROOT


def code_version() -> str:
    """A hash of the code this process would run: its files, the real interpreter and the SDK's directory.

    Every path is resolved first: ``python``, ``python3`` and a symlink to
    either are one interpreter, and must find one resident process.
    """
    from tui.resident.wire import PROTOCOL

    interpreter = os.path.realpath(sys.executable)
    digest = hashlib.sha256(f"{PROTOCOL}\0{interpreter}\0{sys.version}".encode())
    paths: list[Path] = []
    for name in _CODE_DIRS:
        paths.extend(sorted((_ROOT / name).rglob("*.py")))
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            paths.append(Path(spec.origin).resolve().parent)
    for path in paths:
        with contextlib.suppress(OSError):
            info = path.stat()
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def socket_path() -> Path:
    """Where the resident process for this code listens."""
    return runtime_dir() / f"harness-{code_version()}.sock"
