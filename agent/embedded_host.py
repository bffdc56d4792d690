"""The embedded sandbox host: the same server, started as a child process on a private unix socket.

The child is ``python -m remote_sandbox serve --provider local`` with a fresh
random token in a 0600 file, listening on a socket in a 0700 temp dir. Its
stdin is a pipe this process holds: when we exit, however we exit (SIGKILL
included), the pipe closes, the child sees EOF and shuts down, destroying its
sandboxes. It runs in its own session, so a Ctrl-C meant for the harness does
not reach it, and it never inherits the Anthropic credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.sandbox_client import HostUnreachable

READY_LINE_PREFIX = "tether sandbox host listening on "
"""What the host prints once it accepts calls (remote_sandbox.cli prints it; a test keeps them equal)."""

START_TIMEOUT_S = 30.0
"""How long the child may take to say it is listening."""

STOP_GRACE_S = 10.0
"""How long the child may take to shut down after its stdin closes, before it is terminated."""

ORPHAN_AGE_S = 600.0
"""A state dir no host holds and untouched this long was left by a killed host: it is removed."""

SCRUBBED_ENV_PREFIXES = ("ANTHROPIC_", "TETHER_SANDBOX_TOKEN")
"""Environment the child never gets: credentials stay with the harness."""


@dataclass(frozen=True)
class SharedHost:
    """An embedded host another process runs and lends to this run (the resident harness's)."""

    target: str
    """``unix:///.../host.sock``."""
    token: str
    """Its bearer token."""


class EmbeddedHostError(HostUnreachable):
    """The embedded host could not start; the message quotes what it said."""


def embedded_state_root() -> Path:
    """Where embedded hosts keep their sandboxes (one subdirectory per host)."""
    import platformdirs

    return Path(platformdirs.user_state_dir("tether")) / "sandbox-host" / "embedded"


class EmbeddedHost:
    """A sandbox host child process for this session only."""

    def __init__(
        self,
        *,
        python: str | None = None,
        state_root: Path | None = None,
        start_timeout: float = START_TIMEOUT_S,
        workspace_roots: list[Path] | None = None,
    ) -> None:
        """Prepare to run the host with ``python`` (default: this interpreter)."""
        self.python = python or sys.executable
        """The interpreter that runs ``-m remote_sandbox``."""
        self.state_root = state_root or embedded_state_root()
        """Parent of this host's state dir."""
        self.start_timeout = start_timeout
        """Seconds the child may take to start listening."""
        self.workspace_roots = list(workspace_roots or [])
        """Directories under which a sandbox may use an existing directory as its (direct) workspace."""
        self.target = ""
        """``unix:///.../host.sock`` once started."""
        self.token = ""
        """The bearer token once started."""
        self.process: asyncio.subprocess.Process | None = None
        """The child process once started."""
        self.runtime_dir: Path | None = None
        """The private temp dir: socket, token file, the child's log."""
        self.state_dir: Path | None = None
        """The child's state dir (its sandboxes' workspaces)."""
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path | None:
        """The child's stderr log (one line per RPC), while it runs."""
        return self.runtime_dir / "host.log" if self.runtime_dir is not None else None

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        """Make the private dirs and token file; return the child's command line and environment."""
        _sweep_orphans(self.state_root)
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="tether-host-"))
        self.token = secrets.token_urlsafe(32)
        token_file = self.runtime_dir / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.token + "\n")
        socket_path = self.runtime_dir / "host.sock"
        self.state_dir = self.state_root / secrets.token_hex(6)
        args = [
            self.python, "-m", "remote_sandbox", "serve",
            "--provider", "local",
            "--listen", f"unix://{socket_path}",
            "--token-file", str(token_file),
            "--state-dir", str(self.state_dir),
            "--exit-with-parent",
            # Its own private dirs go with it, also when this process is SIGKILLed.
            "--remove-on-exit", str(self.runtime_dir),
            "--remove-on-exit", str(self.state_dir),
            # The user is both tenant and operator here: their recipes may copy any base.
            "--allow-base", "/",
        ]  # fmt: skip
        for root in self.workspace_roots:
            args += ["--allow-workspace-root", str(root)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV_PREFIXES)}
        return args, env

    async def start(self) -> tuple[str, str]:
        """Start the child and wait until it listens; return ``(target, token)``."""
        if self.process is not None:
            return self.target, self.token
        args, env = self._prepare()
        assert self.log_path is not None
        with open(self.log_path, "wb") as log:
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *args,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                self._remove_dirs()
                raise EmbeddedHostError(f"could not start the embedded sandbox host ({self.python}): {exc}") from None
        try:
            line = await self._ready_line()
        except BaseException:
            await self.stop(grace=0.0)  # a child that never came up has nothing to shut down cleanly
            raise
        # The host prints the address it bound, already in ``unix:///path`` form.
        self.target = line[len(READY_LINE_PREFIX) :]
        return self.target, self.token

    def start_blocking(self) -> tuple[str, str]:
        """``start()`` for a process that must not run an event loop (the resident harness forks)."""
        args, env = self._prepare()
        assert self.log_path is not None
        with open(self.log_path, "wb") as log:
            try:
                self._popen = subprocess.Popen(
                    args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True
                )
            except OSError as exc:
                self._remove_dirs()
                raise EmbeddedHostError(f"could not start the embedded sandbox host ({self.python}): {exc}") from None
        assert self._popen.stdout is not None
        ready = selectors.DefaultSelector()
        ready.register(self._popen.stdout, selectors.EVENT_READ)
        line = (
            self._popen.stdout.readline().decode(errors="replace").strip() if ready.select(self.start_timeout) else ""
        )
        if not line.startswith(READY_LINE_PREFIX):
            self.stop_blocking(grace=0.0)
            raise EmbeddedHostError(f"the embedded sandbox host failed to start:\n{self._log_tail() or line}")
        self.target = line[len(READY_LINE_PREFIX) :]
        return self.target, self.token

    def stop_blocking(self, grace: float = STOP_GRACE_S) -> None:
        """``stop()`` for a host started with ``start_blocking``."""
        popen, self._popen = self._popen, None
        if popen is not None:
            if popen.stdin is not None:
                popen.stdin.close()
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        self._remove_dirs()

    def forget_in_child(self) -> None:
        """In a forked child: drop our copy of the host's pipes, so only the parent holds it alive."""
        popen, self._popen = self._popen, None
        if popen is not None:
            for pipe in (popen.stdin, popen.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.runtime_dir = self.state_dir = None

    async def _ready_line(self) -> str:
        """The child's listening line, or EmbeddedHostError quoting its log."""
        assert self.process is not None and self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), self.start_timeout)
        except TimeoutError:
            raise EmbeddedHostError(
                f"the embedded sandbox host did not start within {self.start_timeout:g} s:\n{self._log_tail()}"
            ) from None
        line = raw.decode(errors="replace").strip()
        if not line.startswith(READY_LINE_PREFIX):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
            code = self.process.returncode
            said = f" (exit code {code})" if code is not None else ""
            raise EmbeddedHostError(f"the embedded sandbox host failed to start{said}:\n{self._log_tail() or line}")
        return line

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            assert self.log_path is not None
            return self.log_path.read_text(errors="replace")[-limit:].strip()
        except (OSError, AssertionError):
            return ""

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Close the child's stdin (it shuts down and destroys its sandboxes), wait ``grace`` s, then make sure it is gone."""
        process, self.process = self.process, None
        if process is not None:
            if process.stdin is not None and not process.stdin.is_closing():
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            if process.stdout is not None:
                process.stdout.feed_eof()
        self._remove_dirs()

    def _remove_dirs(self) -> None:
        for path in (self.runtime_dir, self.state_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self.runtime_dir = self.state_dir = None

    async def __aenter__(self) -> EmbeddedHost:
        """Start the host; ``target`` and ``token`` are then set."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the host."""
        await self.stop()


def _sweep_orphans(root: Path) -> None:
    """Remove state dirs of embedded hosts that were killed before they could clean up."""
    try:
        children = list(root.iterdir())
    except OSError:
        return
    now = time.time()
    for child in children:
        lock = child / "host.lock"
        try:
            if now - child.stat().st_mtime < ORPHAN_AGE_S:
                continue  # may be a host that is starting right now
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live host holds it
        finally:
            os.close(fd)
        shutil.rmtree(child, ignore_errors=True)
