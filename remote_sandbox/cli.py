"""The sandbox host's command line: ``tether sandbox serve`` and ``python -m remote_sandbox serve``.

When the host is ready it prints exactly one line on stdout,
``tether sandbox host listening on <address>``, which launchers wait for.
Everything else (one line per RPC, warnings) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import shutil
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from protos.grpc_engine import choose_io_engine
from remote_sandbox.config import (
    DEFAULT_MAX_EXECS_PER_SANDBOX,
    DEFAULT_MAX_SANDBOXES_PER_TENANT,
    DEFAULT_REAP_INTERVAL_S,
    HostConfig,
    HostStartError,
    default_state_dir,
)

READY_LINE_PREFIX = "tether sandbox host listening on "
"""The start of the one line printed on stdout once the host accepts calls."""

DEFAULT_LISTEN = "127.0.0.1:50451"
"""Where ``serve`` listens unless told otherwise: loopback only."""

DEFAULT_MAX_WRITE_BYTES = "1G"
"""``--max-write-bytes`` unless given (the host's ``DEFAULT_MAX_WRITE_BYTES``, as a size a user types)."""

N = TypeVar("N", int, float)

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

TOKEN_HELP = (
    "a token file is required (--token-file F): one token per line, or 'TENANT TOKEN' lines; "
    "make one with: python -c 'import secrets; print(secrets.token_hex(32))' > F && chmod 600 F"
)


def byte_size(text: str) -> int:
    """A positive byte count from ``1048576``, ``512K``, ``64M``, ``1G`` or ``1GiB`` (binary units)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = raw, ""
    if raw and raw[-1] in _SIZE_UNITS:
        number, unit = raw[:-1], raw[-1]
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use bytes or K, M, G (e.g. 512M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be more than 0")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    return _positive(text, int, "a whole number", "at least 1")


def positive_seconds(text: str) -> float:
    """A number of seconds above 0."""
    return _positive(text, float, "a number of seconds", "more than 0 seconds")


def _positive(text: str, kind: type[N], what: str, bound: str) -> N:
    """``text`` as a ``kind`` above 0; else an argparse error saying it is not ``what`` or must be ``bound``."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be {bound}")
    return value


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Have glibc's malloc reuse the buffers of file data rather than hand them back to the kernel each time.

    By default a buffer past 128 KiB (every 256 KiB message, every 4 MiB batch) is mapped
    fresh and freed memory past twice that is returned at once, so each one is faulted in
    and zeroed again: about a third of the host's CPU time in a 100 MB ReadFile, measured
    with ``bench/bench_sandbox_files.py``. Buffers below ``mmap_threshold`` now come from the
    heap and up to ``trim_threshold`` bytes of freed memory are kept for the next ones.
    Returns whether the C library took it (not glibc: nothing to tune).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``tether sandbox``."""
    parser = argparse.ArgumentParser(prog="tether sandbox", description="Run a tether sandbox host.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve sandboxes over gRPC")
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="ADDR",
        help=f"HOST:PORT or unix:///path (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    serve.add_argument(
        "--provider",
        choices=("docker", "local"),
        default="local",
        help="docker containers, or local directories under bubblewrap (default local)",
    )
    serve.add_argument(
        "--token-file", type=Path, metavar="F", help="bearer tokens, one per line ('TOKEN' or 'TENANT TOKEN'); required"
    )
    serve.add_argument("--tls-cert", type=Path, metavar="F", help="PEM certificate chain: serve TLS (grpcs://)")
    serve.add_argument("--tls-key", type=Path, metavar="F", help="PEM private key of --tls-cert")
    serve.add_argument("--state-dir", type=Path, metavar="D", help="where sandboxes live (default: the user state dir)")
    serve.add_argument("--default-image", default="", metavar="IMG", help="docker: the image of recipes that name none")
    serve.add_argument("--exit-with-parent", action="store_true", help="shut down cleanly when stdin reaches EOF")
    serve.add_argument("--keep-sandboxes", action="store_true", help="leave sandboxes in place when the host stops")
    serve.add_argument(
        "--remove-on-exit", type=Path, action="append", default=[], metavar="DIR",
        help="remove DIR when the host stops (repeatable; the embedded host's private dirs, so a killed parent leaves nothing behind)",
    )  # fmt: skip
    serve.add_argument(
        "--allow-workspace-root", type=Path, action="append", default=[], metavar="DIR",
        help="let a Provision use an existing directory under DIR as its workspace, bind-mounted read-write (repeatable; refused otherwise)",
    )  # fmt: skip
    serve.add_argument(
        "--allow-base",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="local: let recipes copy a 'base' directory from under DIR (repeatable)",
    )
    limits = serve.add_argument_group("limits (past one, a call fails with RESOURCE_EXHAUSTED naming it)")
    limits.add_argument(
        "--max-sandboxes-per-tenant",
        type=positive_int,
        default=DEFAULT_MAX_SANDBOXES_PER_TENANT,
        metavar="N",
        help=f"live sandboxes one token (tenant) may have at once (default {DEFAULT_MAX_SANDBOXES_PER_TENANT})",
    )
    limits.add_argument(
        "--max-execs-per-sandbox",
        type=positive_int,
        default=DEFAULT_MAX_EXECS_PER_SANDBOX,
        metavar="N",
        help=f"commands one sandbox may run at the same time (default {DEFAULT_MAX_EXECS_PER_SANDBOX})",
    )
    limits.add_argument(
        "--max-write-bytes",
        type=byte_size,
        default=byte_size(DEFAULT_MAX_WRITE_BYTES),
        metavar="SIZE",
        help=f"largest file one WriteFile may write, checked as it streams in; bytes or K/M/G (default {DEFAULT_MAX_WRITE_BYTES})",
    )
    serve.add_argument(
        "--reap-interval",
        type=positive_seconds,
        default=DEFAULT_REAP_INTERVAL_S,
        metavar="SECONDS",
        help=f"how often sandboxes idle past their recipe's TTL are destroyed (default {DEFAULT_REAP_INTERVAL_S:g})",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="stderr log level (default INFO: one line per RPC)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``tether sandbox <argv>``; return the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    choose_io_engine()  # before grpc is imported, which the next line does
    # Imported here: argument errors and --help stay fast.
    from remote_sandbox.auth import TokenFileError, load_token_file, token_file_is_private

    keep_freed_memory()

    if args.token_file is None:
        print(f"tether sandbox serve: {TOKEN_HELP}", file=sys.stderr)
        return 2
    try:
        tokens = load_token_file(args.token_file)
    except TokenFileError as exc:
        print(f"tether sandbox serve: {exc}", file=sys.stderr)
        return 2
    if not token_file_is_private(args.token_file):
        logging.getLogger("remote_sandbox").warning(
            "token file %s can be read by other users; chmod 600 it", args.token_file
        )
    config = HostConfig(
        listen=args.listen,
        provider=args.provider,
        tokens=tokens,
        state_dir=args.state_dir or default_state_dir(),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        default_image=args.default_image,
        destroy_on_exit=not args.keep_sandboxes,
        allow_base=args.allow_base,
        allow_workspace_roots=args.allow_workspace_root,
        max_sandboxes_per_tenant=args.max_sandboxes_per_tenant,
        max_execs_per_sandbox=args.max_execs_per_sandbox,
        max_write_bytes=args.max_write_bytes,
        reap_interval_s=args.reap_interval,
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(config, exit_with_parent=args.exit_with_parent))
    except HostStartError as exc:
        print(f"tether sandbox serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for directory in args.remove_on_exit:
            shutil.rmtree(directory, ignore_errors=True)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else None (asyncio's own)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(config: HostConfig, *, exit_with_parent: bool) -> int:
    """Start the host, announce it, and run until SIGTERM, SIGINT or (optionally) stdin EOF."""
    from remote_sandbox.server import SandboxHost

    host = SandboxHost(config)
    address = await host.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.ensure_future(_wait_stdin_eof(stop)) if exit_with_parent else None
    sys.stdout.write(f"{READY_LINE_PREFIX}{address}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await host.stop(grace=2.0)
    return 0


async def _wait_stdin_eof(stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin reaches EOF: the parent that holds the pipe has gone."""
    loop = asyncio.get_running_loop()
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        mode = 0  # no stdin at all: nobody holds it, so it counts as EOF
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.read(4096):
            pass
    elif mode:
        # A terminal, a file or /dev/null: the event loop cannot watch every kind, a thread can.
        await asyncio.to_thread(_drain_blocking)
    stop.set()


def _drain_blocking() -> None:
    """Read stdin until EOF, blocking."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    while stream is not None and stream.read(4096):
        pass
