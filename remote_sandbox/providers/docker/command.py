"""One command on one worker of a container's exec server, as the shared exec loop drives it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import uuid
from pathlib import Path

from remote_sandbox.execution.request import DRAIN_AFTER_EXIT_S
from remote_sandbox.execution.status import ExitStatus
from remote_sandbox.execution.stream import EventBuffer, FdFeed, Item
from remote_sandbox.providers.base import ExecSpec, ProviderError, SandboxNotFound
from remote_sandbox.providers.docker.exec_server import ContainerExec
from remote_sandbox.providers.docker.workers import Worker

KILL_CONFIRM_TIMEOUT_S = 10.0
"""How long to wait for a killed group to be confirmed gone."""

# One command, written to the worker's W.sh and sourced by its runner, whose environment
# and directory it may change freely. `exec` makes the runner the command (same pid, so
# the pid is also the group id), with its streams on the worker's FIFOs. When the
# directory is missing, the command becomes a `cd` that fails with the shell's own words.
_RUN_SCRIPT = """\
{exports}if cd -- {cwd} 2>/dev/null; then set -- {command}; else set -- /bin/sh -c 'cd -- "$1"' sh {cwd}; fi
exec "$@" <{stdin} >"$w.out" 2>"$w.err"
"""


class DockerCommand:
    """The host side of one command on one worker: its files, readers and what they reported."""

    kill_group_on_exit = False
    """As with ``docker exec``: a background job that holds no output outlives its command."""

    def __init__(self, container: ContainerExec, spec: ExecSpec) -> None:
        """Name the files of a new command; ``start`` hands it to a worker."""
        self.container = container
        """The sandbox it runs in."""
        self.spec = spec
        self.worker: Worker | None = None
        """The worker that runs it, once one was free."""
        self.run_id = uuid.uuid4().hex
        """Unique name of this command's own files (stdin, final directory, spill)."""
        self.events = EventBuffer()
        """Chunks and EOFs from the worker's three FIFOs, in arrival order."""
        self.feeds: dict[str, FdFeed] = {}
        self.pid = 0
        """The command's pid (and process group) in the container, once reported."""
        self.exit_status: int | None = None
        """The status ``wait`` gave the worker for this command's pid, once reported."""
        self.exited_itself = False
        """Whether the command's shell reported (from its EXIT trap) that it exited, not died of a signal."""
        self.kill_sent = False
        """Whether the exec server was asked to kill the group."""
        self.group_state: str | None = None
        """``gone`` or ``alive`` after a kill request was carried out."""
        self.worker_lost = False
        """Whether the worker vanished without reporting an exit."""
        self._own_files: list[Path] = []
        self._held_ctl: int | None = None
        self._ctl_buffer = b""

    # ----- files

    @property
    def stdin_file(self) -> Path:
        """Where the command's stdin is written, when it has one."""
        return self.container.control_dir / f"{self.run_id}.in"

    @property
    def cwd_file(self) -> Path:
        """Where the shell's EXIT trap writes its final directory, when asked to."""
        return self.container.control_dir / f"{self.run_id}.cwd"

    def _open(self, worker: Worker) -> None:
        """Write the script and stdin, and open the read ends of the worker's FIFOs (read once the request is out)."""
        spec = self.spec
        if spec.stdin:
            self._own_files.append(self.stdin_file)
            self.stdin_file.write_bytes(spec.stdin)
        if spec.report_cwd:
            self._own_files.append(self.cwd_file)
        worker.write_script(self._run_script(worker))
        assert worker.ctl_fd is not None
        self.feeds["ctl"] = FdFeed("ctl", worker.ctl_fd, self.events, owns_fd=False, watch=False)
        # Opened afresh per command, before the request: the kernel reports no EOF on a
        # read end until a writer has come and gone since it was opened.
        for name in ("out", "err"):
            fd = os.open(worker.paths[name], os.O_RDONLY | os.O_NONBLOCK)
            self.feeds[name] = FdFeed(name, fd, self.events, watch=False)

    def _run_script(self, worker: Worker) -> str:
        """The script the worker sources to start the command and report on it."""
        spec = self.spec
        exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in spec.env.items())
        if spec.shell is not None:
            # The EXIT trap runs when the shell exits by itself (never when a signal kills it), so
            # a status past 128 it reports is a code it chose, not a signal. It costs a fork (the
            # shell can no longer exec its last command), so it is set only where an explicit
            # `exit` may be; elsewhere 128+N reads as signal N, and Exited says it was inferred.
            # Same line as the script, so the shell's error messages keep its line numbers.
            traps = []
            if "exit" in spec.shell:
                ctl = shlex.quote(self.container.sandbox_path(worker.paths["ctl"]))
                traps.append(f's=$?; [ "$s" -gt 128 ] && echo "code $s" 1<>{ctl}')
            if spec.report_cwd:
                traps.append(f"pwd >{shlex.quote(self.container.sandbox_path(self.cwd_file))}")
            script = spec.shell
            if traps:
                script = f"trap {shlex.quote('; '.join(traps))} EXIT; {script}"
            argv = ["/bin/sh", "-c", script]
        else:
            assert spec.argv is not None
            argv = spec.argv
        stdin = shlex.quote(self.container.sandbox_path(self.stdin_file)) if spec.stdin else "/dev/null"
        return _RUN_SCRIPT.format(
            exports=exports,
            cwd=shlex.quote(spec.cwd),
            command=" ".join(shlex.quote(part) for part in argv),
            stdin=stdin,
        )

    # ----- the running command, as the exec loop sees it

    async def start(self, deadline: float | None) -> bool:
        """Hand the command to a worker and wait for its pid; False if no worker was ready before ``deadline``."""
        while True:
            worker = await self.container.acquire(deadline)
            if worker is None:
                return False
            if not worker.alive():
                # Killed while idle (by a command of another run, say): take another.
                self.container.retire(worker)
                continue
            self.worker = worker
            try:
                self._open(worker)
                worker.request(b"run\n")
            except BrokenPipeError:
                # The worker died while idle (a command killed it, say): take another.
                self._discard(worker)
                continue
            except BaseException:
                self._discard(worker)
                raise
            break
        for feed in self.feeds.values():
            feed.start()
        # Output read before the pid waits: Started goes first.
        held: list[Item] = []
        while not self.pid:
            item = await self.events.get(deadline)
            if item is None:
                break
            if item[0] == "ctl" and item[1] is not None:
                self._note(item[1])
            else:
                held.append(item)
                if item[0] == "ctl":
                    break  # the worker is gone: the loop finds out why
        self.events.requeue(held)
        return True

    @property
    def ended(self) -> bool:
        """Whether the command's leader has exited (or its worker was lost)."""
        return self.exit_status is not None or self.worker_lost

    async def notice(self, stream: str, data: bytes | None) -> None:
        """A control line, or the control FIFO's EOF: the worker vanished without reporting an exit."""
        if data is not None:
            self._note(data)
        elif not self.ended:
            await self.container.check_running()
            # A command killed its own worker; its group may live on, so end it.
            self.worker_lost = True
            await self.kill()

    def status(self) -> ExitStatus:
        """How the leader ended, as the worker's ``wait`` and the shell's EXIT trap told."""
        return ExitStatus.from_shell(self.exit_status, exited_itself=self.exited_itself)

    def end_group(self) -> None:
        """Never called: the group may outlive its leader."""

    async def kill(self) -> None:
        """Kill the command's whole group and confirm it is gone; output read meanwhile stays buffered."""
        held: list[Item] = []
        try:
            await self._kill(held)
        finally:
            self.events.requeue(held)

    async def _kill(self, held: list[Item]) -> None:
        loop = asyncio.get_running_loop()
        if not self.pid:
            # Not started as far as we know; a live worker reports the pid at once, so wait briefly.
            until = loop.time() + DRAIN_AFTER_EXIT_S
            while not self.pid and self.exit_status is None and not self.feeds["ctl"].eof:
                if not await self._absorb(until, held):
                    break
            if not self.pid:
                return
        assert self.worker is not None
        # The worker may be gone and its control FIFO at EOF: holding a writer keeps the
        # server's answer from being lost.
        self._hold_control()
        self.kill_sent = True
        try:
            leader = "alive" if self.exit_status is None else "dead"
            await self.container.submit(f"kill {self.worker.name} {self.pid} {leader}\n")
            until = loop.time() + KILL_CONFIRM_TIMEOUT_S
            while self.group_state is None or not self.ended:
                if not await self._absorb(until, held):
                    break
        except SandboxNotFound:
            return  # the container and everything in it are gone already
        finally:
            self._release_control()

    async def _absorb(self, until: float, held: list[Item]) -> bool:
        """Take one item while killing: control lines are noted, output is held; False once ``until`` passed."""
        item = await self.events.get(until)
        if item is None:
            return False
        if item[0] == "ctl" and item[1] is not None:
            self._note(item[1])
        elif item[0] != "ctl":
            held.append(item)
        return True

    def final_cwd(self) -> str:
        """The shell's final directory as its EXIT trap wrote it, or empty."""
        try:
            return self.cwd_file.read_text(errors="replace").rstrip("\n")
        except OSError:
            return ""

    async def finish(self) -> None:
        """Bring the exec server back if a command killed it.

        Workers outlive the server, but kills and new workers need it: one that a
        command killed comes back now, not when a timeout needs it. Checked at the
        end, not the start: a SIGKILL lands asynchronously, and by now it has.
        """
        if not self.container.server_alive():
            await self.container.restart_server()

    def close(self) -> None:
        """Close the run; its worker goes back to the idle pool if the run left nothing behind."""
        self._close_files()
        if self.worker is not None:
            self.container.release(self.worker, self._clean)

    async def abandon(self) -> None:
        """Kill the group of an abandoned command, then close it and settle its worker."""
        try:
            if self.worker is not None and (not self.ended or self._output_open):
                await self.kill()
        except ProviderError:
            pass  # the sandbox is gone, and the command with it
        finally:
            self.close()

    # ----- bookkeeping

    @property
    def _output_open(self) -> bool:
        """Whether stdout or stderr has not reached EOF yet."""
        return not (self.feeds["out"].eof and self.feeds["err"].eof)

    @property
    def _clean(self) -> bool:
        """Whether the worker may run another command: it reported the exit and nothing is left over."""
        return (
            self.exit_status is not None
            and bool(self.pid)
            and not self.worker_lost
            and not self._output_open
            and not self.feeds["ctl"].eof
            and (not self.kill_sent or self.group_state == "gone")
            and self._held_ctl is None
        )

    def _hold_control(self) -> None:
        """Hold a writer on the control FIFO and read it again if it already hit EOF.

        The worker may be gone (that is why we kill): the server's ``gone`` then comes
        from a writer that opens and closes at once, and must not be lost.
        """
        assert self.worker is not None
        if self._held_ctl is None:
            self._held_ctl = os.open(self.worker.paths["ctl"], os.O_WRONLY | os.O_NONBLOCK)
        self.feeds["ctl"].start()

    def _release_control(self) -> None:
        """Drop the held writer of the control FIFO."""
        if self._held_ctl is not None:
            os.close(self._held_ctl)
            self._held_ctl = None

    def _note(self, data: bytes) -> None:
        """Record what the complete control lines in ``data`` say."""
        self._ctl_buffer += data
        *lines, self._ctl_buffer = self._ctl_buffer.split(b"\n")
        for raw in lines:
            word, _, rest = raw.decode("ascii", "replace").partition(" ")
            if word == "pid" and rest.isdigit():
                self.pid = int(rest)
            elif word == "code" and rest.isdigit():
                self.exited_itself = True
            elif word == "exit":
                # `exit PID STATUS`; another pid's is a runner that died before taking this
                # command (a command of an earlier run killed it, say).
                pid, _, status = rest.partition(" ")
                if self.pid and pid == str(self.pid) and status.isdigit():
                    self.exit_status = int(status)
            elif word in ("gone", "alive"):
                self.group_state = word

    def _discard(self, worker: Worker) -> None:
        """Give up on ``worker`` before the command ran on it: retire it and start afresh."""
        self._close_files()
        self.container.retire(worker)
        self.worker, self.feeds, self.events = None, {}, EventBuffer()

    def _close_files(self) -> None:
        """Stop reading and delete the command's own files. Safe to call twice."""
        self._release_control()
        for feed in self.feeds.values():
            feed.close()
        for path in self._own_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
