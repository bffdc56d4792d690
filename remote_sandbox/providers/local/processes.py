"""Local commands as the shared exec loop drives them: started by the host, or by the sandbox's launcher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from remote_sandbox.execution.request import DRAIN_AFTER_EXIT_S
from remote_sandbox.execution.status import ExitStatus
from remote_sandbox.execution.stream import EventBuffer, FdFeed
from remote_sandbox.providers.base import SandboxNotRunning
from remote_sandbox.providers.local.launcher import Launcher


class LocalCommand:
    """One running command of a local sandbox: its pipes and exit notice; subclasses start and kill it."""

    kill_group_on_exit = True
    """When the leader exits, the rest of its group goes too (as with one bubblewrap per command)."""

    def __init__(self, stdin: bytes, running: set[LocalCommand], cwd_file: Path | None) -> None:
        """Describe the command; ``start`` runs it. ``running`` is its sandbox's set of running commands."""
        self.stdin = stdin
        self.events = EventBuffer()
        """Output chunks, EOFs and ``("exit", None)``, in arrival order."""
        self.pid = 0
        self.launched = False
        """Whether the command was started (and so must be killed and reaped)."""
        self.exited = False
        """Whether the leader has exited (it may not be reaped yet)."""
        self.returncode: int | None = None
        """Popen-style status once known: negative for a signal."""
        self.shell_status = False
        """Whether ``returncode`` is a shell's (bubblewrap's) 128+N rather than the leader's own wait status."""
        self._running = running
        self._cwd_file = cwd_file
        self._stdin_task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        """Whether the leader has exited."""
        return self.exited

    async def start(self, deadline: float | None) -> bool:
        """Start the command in a new session and begin reading its output."""
        try:
            await self._start()
        except OSError as exc:
            raise SandboxNotRunning(f"could not start the command: {exc}") from None
        self._running.add(self)
        return True

    async def _start(self) -> None:
        raise NotImplementedError

    def kill_group(self) -> None:
        """SIGKILL the command's whole process group (while its id is surely still ours)."""
        raise NotImplementedError

    def reap(self) -> None:
        """Collect the leader's status once it has exited."""

    async def notice(self, stream: str, data: bytes | None) -> None:
        """The only notice is the exit, already recorded when it was queued."""

    def status(self) -> ExitStatus:
        """How the leader ended."""
        self.reap()
        if self.shell_status and self.returncode is not None and self.returncode >= 0:
            return ExitStatus.from_shell(self.returncode)
        return ExitStatus.from_wait(self.returncode)

    def end_group(self) -> None:
        """Kill what the exited leader left in its group."""
        self.kill_group()

    async def kill(self) -> None:
        """Kill the whole group and wait, bounded, for the leader's exit."""
        self.kill_group()
        await self.wait_exit(DRAIN_AFTER_EXIT_S)

    async def finish(self) -> None:
        """Nothing to settle: the group was killed when the leader exited."""

    def final_cwd(self) -> str:
        """The directory the shell's EXIT trap wrote, or empty."""
        if self._cwd_file is None:
            return ""
        try:
            return self._cwd_file.read_text(errors="replace").rstrip("\n")
        except OSError:
            return ""

    async def abandon(self) -> None:
        """Kill the group, wait for the leader to exit, reap it (no zombie is left) and release the pipes."""
        try:
            if self.launched:
                self.kill_group()
                await self.wait_exit(DRAIN_AFTER_EXIT_S * 5)
                self.reap()
        finally:
            self.close()

    def _connect(self, pipes: _Pipes) -> None:
        """Read the command's stdout and stderr; feed its stdin the input, then close it."""
        FdFeed("out", pipes.out_read, self.events)
        FdFeed("err", pipes.err_read, self.events)
        if pipes.in_write >= 0:
            self._stdin_task = asyncio.ensure_future(self._feed_stdin(pipes.in_write))

    def _mark_exited(self, returncode: int | None) -> None:
        """The leader has exited (``returncode`` if already known): queue the exit."""
        if self.exited:
            return
        if returncode is not None:
            self.returncode = returncode
        self.exited = True
        self.events.put(("exit", None))

    async def _feed_stdin(self, fd: int) -> None:
        """Write stdin without blocking the loop, then close it (EOF)."""
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        view = memoryview(self.stdin)
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_writer(fd, ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_writer(fd)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command stopped reading: fine, it had its chance
        finally:
            os.close(fd)

    async def wait_exit(self, timeout: float) -> None:
        """Wait until the leader exited, at most ``timeout`` seconds; output read meanwhile stays buffered."""
        if self.exited:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        held = []
        while not self.exited:
            item = await self.events.get(deadline)
            if item is None:
                break
            if item[0] != "exit":
                held.append(item)
        self.events.requeue(held)

    def close(self) -> None:
        """Release the pipes and the stdin writer, and the cwd file. The process must be dead or killed."""
        for feed in self.events.feeds:
            feed.close()
        if self._stdin_task is not None:
            self._stdin_task.cancel()
        self._running.discard(self)
        if self._cwd_file is not None:
            with contextlib.suppress(OSError):
                self._cwd_file.unlink()


class _Pipes:
    """A command's stdin, stdout and stderr pipes: the child's ends go to whatever starts it, the host keeps the rest."""

    def __init__(self, stdin: bytes) -> None:
        """Make the pipes; stdin reads /dev/null when there is no input."""
        self.out_read, self.out_write = os.pipe()
        self.err_read, self.err_write = os.pipe()
        if stdin:
            self.in_read, self.in_write = os.pipe()
        else:
            self.in_read, self.in_write = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1

    @contextlib.contextmanager
    def handing_over(self) -> Iterator[list[int]]:
        """Around a start: the child's ends (stdin, stdout, stderr) are closed after it; the host's too if it failed."""
        try:
            yield [self.in_read, self.out_write, self.err_write]
        except BaseException:
            for fd in (self.in_write, self.out_read, self.err_read):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            # The child (or the launcher) has its own copies now: the host keeps only its ends.
            for fd in (self.in_read, self.out_write, self.err_write):
                os.close(fd)


class HostProcess(LocalCommand):
    """A command started by the host itself: a plain process, or one bubblewrap per command."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        stdin: bytes,
        running: set[LocalCommand],
        cwd_file: Path | None,
    ) -> None:
        """Describe the command; ``start`` runs it."""
        super().__init__(stdin, running, cwd_file)
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._wait_task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        """Start the command in a new session and begin reading its output."""
        loop = asyncio.get_running_loop()
        pipes = _Pipes(self.stdin)
        with pipes.handing_over() as (stdin, stdout, stderr):
            self.popen = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                close_fds=True,
            )
        self.launched = True
        self.pid = self.popen.pid
        self._connect(pipes)
        if hasattr(os, "pidfd_open"):
            # A pidfd says the leader exited without reaping it: the group id stays
            # reserved until we reap, so killing the group can never hit a stranger.
            self._pidfd = os.pidfd_open(self.pid)
            loop.add_reader(self._pidfd, self._on_exit)
        else:
            self._wait_task = asyncio.ensure_future(self._wait_thread())

    def _on_exit(self) -> None:
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self._mark_exited(None)

    async def _wait_thread(self) -> None:
        assert self.popen is not None
        self._mark_exited(await asyncio.to_thread(self.popen.wait))

    def kill_group(self) -> None:
        """SIGKILL the command's whole process group (while its id is surely still ours)."""
        if self.popen is None or self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def reap(self) -> None:
        """Collect the leader's status (it has exited)."""
        if self.popen is not None and self.returncode is None and self.exited:
            self.returncode = self.popen.wait()

    def close(self) -> None:
        """Release the pipes, the pidfd and the waiter. The process must be dead or killed."""
        super().close()
        if self._wait_task is not None:
            self._wait_task.cancel()
        if self._pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class LauncherProcess(LocalCommand):
    """A command started by its sandbox's resident launcher, which holds the leader as its child."""

    def __init__(
        self,
        launcher: Callable[[], Awaitable[Launcher]],
        argv: list[str],
        env: dict[str, str],
        stdin: bytes,
        running: set[LocalCommand],
        cwd_file: Path | None,
        direct: tuple[str, list[str]] | None = None,
    ) -> None:
        """Describe the command; ``start`` hands it to ``launcher``.

        ``direct`` is ``(cwd, argv)`` of an argv command the launcher may start
        without ``argv``'s shell; the shell is the fallback.
        """
        super().__init__(stdin, running, cwd_file)
        self._get_launcher = launcher
        self.launcher: Launcher | None = None
        """The sandbox's launcher, once started (again) for this command."""
        self.argv = argv
        self.env = env
        self.direct = direct
        self.request_id = 0
        """The launcher's name for this command, once sent."""

    async def _start(self) -> None:
        """Hand the command and its pipes to the launcher; return once it runs."""
        self.launcher = launcher = await self._get_launcher()
        pipes = _Pipes(self.stdin)
        with pipes.handing_over() as fds:
            started = launcher.submit(self, fds)
        # Reading starts before the launcher answers: a chatty command must not fill its pipe first.
        self.launched = True
        self._connect(pipes)
        self.pid = await started

    def kill_group(self) -> None:
        """Ask the launcher to SIGKILL the command's whole process group."""
        if self.launched and not self.exited and self.launcher is not None:
            self.launcher.kill(self)

    def on_exit(self, returncode: int | None) -> None:
        """The launcher reports the leader's end (its group already killed and the leader reaped)."""
        self._mark_exited(returncode)
