"""The host side of one resident worker shell of a container's exec server: its FIFOs and script file."""

from __future__ import annotations

import contextlib
import errno
import os
import select
from pathlib import Path


class Worker:
    """The host side of one resident worker shell: its files and the descriptors kept open."""

    def __init__(self, control_dir: Path, name: str) -> None:
        """Name the worker's files in ``control_dir``; nothing is created yet."""
        self.name = name
        """``w<N>``, unique within its sandbox."""
        self.paths = {suffix: control_dir / f"{name}.{suffix}" for suffix in ("req", "ctl", "out", "err", "sh")}
        """Host paths of its request, control, stdout and stderr FIFOs and its script file."""
        self.ctl_fd: int | None = None
        """The read end of its control FIFO, open from before it starts until it is retired."""
        self.req_fd: int | None = None
        """The write end of its request FIFO, once it said ``ready``."""
        self.script_fd: int | None = None
        """Its script file, open for rewriting in place."""
        self._script_size = 0

    def make_files(self) -> None:
        """Make the FIFOs and open the control FIFO's read end."""
        for suffix in ("req", "ctl", "out", "err"):
            os.mkfifo(self.paths[suffix], 0o600)
        self.ctl_fd = os.open(self.paths["ctl"], os.O_RDONLY | os.O_NONBLOCK)
        self.script_fd = os.open(self.paths["sh"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write_script(self, script: str) -> None:
        """Replace the script the worker sources next.

        Rewritten in place, never truncated to zero: ext4 flushes a file truncated to
        zero and rewritten when it is closed, which costs milliseconds per command.
        """
        assert self.script_fd is not None
        data = script.encode()
        os.pwrite(self.script_fd, data, 0)
        if len(data) < self._script_size:
            os.ftruncate(self.script_fd, len(data))
        self._script_size = len(data)

    def request(self, line: bytes) -> None:
        """Write one request line (atomic: shorter than PIPE_BUF); OSError if the worker is gone."""
        if self.req_fd is None:
            raise BrokenPipeError(errno.EPIPE, "the worker never started")
        os.write(self.req_fd, line)

    def alive(self) -> bool:
        """Whether the worker still holds its control FIFO: once it is gone, the read end hangs up."""
        if self.ctl_fd is None:
            return False
        poller = select.poll()
        poller.register(self.ctl_fd, select.POLLIN)
        return not any(events & select.POLLHUP for _fd, events in poller.poll(0))

    def retire(self) -> None:
        """Delete the worker's files, wake its idle runner with ``quit`` and close the host's ends.

        The files go first: the worker stops when it finds its request FIFO gone, right
        after its runner ends (at once if idle, else when the command ends).
        """
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.req_fd is None and self.ctl_fd is not None:
            # Never said ready, or not yet: if it did start, it reads this all the same.
            with contextlib.suppress(OSError):
                self.req_fd = os.open(self.paths["req"], os.O_WRONLY | os.O_NONBLOCK)
        if self.req_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.req_fd, b"quit\n")
        for fd in (self.req_fd, self.ctl_fd, self.script_fd):
            if fd is not None:
                os.close(fd)
        self.req_fd = self.ctl_fd = self.script_fd = None
