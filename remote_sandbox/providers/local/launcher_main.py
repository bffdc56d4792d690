"""tether's command launcher: runs inside a local sandbox's bubblewrap, one per sandbox, for its whole life.

Run as ``python3 -I -S -c <this file's text> tether-launcher FD`` by the Python 3.8+ of
the host's ``/usr`` (standard library only; the host never imports it). ``FD`` is a
``SOCK_SEQPACKET`` socket to the host: each request carries a command and its stdin,
stdout and stderr (``SCM_RIGHTS``); the launcher starts it with one ``posix_spawn`` in
its own process group, reports its pid, and reports its wait status once its whole
process group was killed and it was reaped (both in one message when the command ends
within ``ANNOUNCE_AFTER_S``). It exits when the host closes the socket.
See ``remote_sandbox.providers.local.launcher`` for the host side.
"""

import array
import json
import os
import selectors
import signal
import socket
import sys
import time

# Commands get the dispositions a shell would give them, not Python's.
DEFAULT_SIGNALS = [s for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT) if s]

# A command's pid is told this late at most: one that ends sooner is told in one message with
# its end ("ran"), which spares the host a wake-up while the command runs.
ANNOUNCE_AFTER_S = 0.005


class Launcher:
    """Starts commands the host sends, kills their groups on request, reports how they end."""

    def __init__(self, sock):
        """Serve requests arriving on ``sock``."""
        self.sock = sock
        self.leaders = {}  # pid -> request id
        self.unannounced = {}  # pid -> when its "started" is due

    def send(self, message):
        """One message to the host."""
        self.sock.send(json.dumps(message).encode())

    def run(self, request, fds):
        """Start one command with ``fds`` as its stdin, stdout, stderr (and a memfd holding a long request)."""
        if request.get("memfd"):
            with os.fdopen(os.dup(fds[3]), "rb") as memfd:
                request = json.loads(memfd.read())
        argv, env = request["argv"], request["env"]
        pid = None
        direct = request.get("direct")
        if direct:
            # Skip the shell that only changes directory: cd here, and the command inherits it.
            # Anything unusual (no such directory or program, not executable) takes the shell's way,
            # which fails with the shell's own words.
            try:
                os.chdir(request["cwd"])
                if "/" not in direct[0] and env.get("PATH") == os.environ.get("PATH"):
                    # posix_spawnp searches the launcher's PATH (the command's too) with a failed execve
                    # per directory before the program's, not a stat and an access in Python each:
                    # 55-65 us less per command here.
                    pid = spawn(direct[0], direct, env, fds, search=True)
                else:
                    program = find_program(direct[0], env.get("PATH", ""))
                    if program is not None:
                        pid = spawn(program, direct, env, fds)
            except OSError:
                pid = None
        try:
            if pid is None:
                pid = spawn(argv[0], argv, env, fds)
        except OSError as error:
            self.send({"op": "failed", "id": request["id"], "error": "%s: %s" % (argv[0], error.strerror)})  # noqa: UP031 - runs on Python 3.8
            return
        self.leaders[pid] = request["id"]
        self.unannounced[pid] = time.monotonic() + ANNOUNCE_AFTER_S

    def announce(self):
        """Tell the pids of commands that have run ``ANNOUNCE_AFTER_S``; the time until the next is due, or None."""
        now = time.monotonic()
        for pid, due in list(self.unannounced.items()):
            if due <= now:
                del self.unannounced[pid]
                self.send({"op": "started", "id": self.leaders[pid], "pid": pid})
        return max(min(self.unannounced.values()) - now, 0) if self.unannounced else None

    def kill(self, request):
        """SIGKILL the group of the command the host names."""
        for pid, request_id in self.leaders.items():
            if request_id == request["id"]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass

    def reap(self):
        """Report every leader that exited, after killing what is left of its group."""
        while True:
            try:
                # WNOWAIT: the exited leader stays a zombie, so its group id is still its own
                # while the rest of the group is killed; only then is it reaped.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            request_id = self.leaders.pop(info.si_pid, None)
            if request_id is not None:
                try:
                    os.killpg(info.si_pid, signal.SIGKILL)
                except OSError:
                    pass
            _, status = os.waitpid(info.si_pid, 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            if request_id is not None and self.unannounced.pop(info.si_pid, None) is not None:
                self.send({"op": "ran", "id": request_id, "pid": info.si_pid, "status": code})
            elif request_id is not None:
                self.send({"op": "exited", "id": request_id, "status": code})

    def receive(self):
        """Take one request from the host; False once the host has gone."""
        data, ancillary, _, _ = self.sock.recvmsg(
            65536, socket.CMSG_SPACE(8 * array.array("i").itemsize), getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        )
        if not data:
            return False
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        try:
            request = json.loads(data)
            if request["op"] == "run":
                self.run(request, list(fds))
            elif request["op"] == "kill":
                self.kill(request)
        finally:
            for fd in fds:
                os.close(fd)
        return True


def find_program(name, path):
    """The file ``name`` runs as, searched in ``path`` like a shell does; None if there is none."""
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def spawn(program, argv, env, fds, search=False):
    """Start ``program`` (searched in the launcher's PATH if ``search``) in its own process group with
    ``fds`` as its standard streams; its pid.

    A group, not a session: the launcher's session (bubblewrap's ``--new-session``) has
    no terminal already, and a new session per command costs the kernel a scheduler
    autogroup. Measured on a 2-core VM: inside the sandbox ``posix_spawn`` returned
    0.3-0.8 ms later with ``setsid``, and an Exec of ``true`` took 0.1-0.4 ms longer.
    """
    return (os.posix_spawnp if search else os.posix_spawn)(
        program,
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, fds[0], 0),
            (os.POSIX_SPAWN_DUP2, fds[1], 1),
            (os.POSIX_SPAWN_DUP2, fds[2], 2),
        ],
        setpgroup=0,
        setsigdef=DEFAULT_SIGNALS,
        setsigmask=[],
    )


def main():
    """Serve the socket named by the last argument until the host closes it."""
    if sys.version_info < (3, 8):  # noqa: UP036 - the sandbox's Python may be older than the host's
        sys.exit("tether-launcher needs Python 3.8 or later")
    sock = socket.socket(fileno=int(sys.argv[-1]))
    os.set_inheritable(sock.fileno(), False)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    launcher = Launcher(sock)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    launcher.send({"op": "ready"})
    while True:
        for key, _ in selector.select(launcher.announce()):
            if key.fileobj is sock:
                if not launcher.receive():
                    sys.exit(0)
            else:
                try:
                    while os.read(wake_read, 4096):
                        pass
                except BlockingIOError:
                    pass
                launcher.reap()


if __name__ == "__main__":
    main()
