"""The docker provider: one container per sandbox, commands run through resident shell workers.

One module per job: ``provider`` (lifecycle, adoption), ``container`` (the engine:
container, labels, limits), ``exec_server`` and ``workers`` (the transport into
the container), ``command`` (one command, as the shared exec loop drives it),
``scripts/`` (the shell that runs inside the container).

Each sandbox is a container (``cap_drop=ALL``, ``no-new-privileges``, pids/memory/cpu
limits, no network unless the recipe asks) whose workspace is a host directory
bind-mounted at the recipe's workdir, and whose spill area (the host directory
``<state>/spill``) is bind-mounted at ``record.spill_mount`` (``/tmp/tether-spill``).

Why not ``docker exec`` per command: it costs 65-90 ms here, and a coding agent runs
many small commands. Instead, at provision, one ``docker exec`` starts a small ``sh``
loop in the container (the *exec server*, ``scripts/server.sh``) that reads one-line
requests from a FIFO in a control directory (host ``<state>/docker-exec``, mounted at
``/run/tether``). The server only forks *workers* and kills process groups; commands
run in workers.

A worker (``scripts/worker.sh``) is a resident ``sh`` with its own FIFOs, made once by
the host: ``W.req`` (requests), ``W.ctl`` (what it reports), ``W.out`` and ``W.err``
(the command's streams), and a script file ``W.sh``. Between commands the worker keeps
a *runner* (``scripts/runner.sh``) ready: a shell already started under ``setsid`` (its
own session and process group), blocked reading ``W.req``. Running a command on an idle
worker costs the host one in-place script write, one 4-byte request and two FIFO opens;
the runner reports ``pid N`` and ``exec``s the command (same pid, so it is also the
group id) with its streams on the FIFOs; the worker waits for it, reports ``exit N S``
and starts the next runner. No ``mkfifo``, no per-command monitor, no polling anywhere:
everything on the host is driven by the event loop's readers. Concurrent commands use
more workers; the server forks one on demand (``spawn W``); up to ``MAX_IDLE_WORKERS``
stay.

Killing a group is a ``kill W <pgid> <leader>`` request to the server (``kill`` is a
builtin, so it works even when a fork bomb exhausts the pids limit); it confirms
``gone`` on the worker's control FIFO once no process of the group is left. A worker
is reused only after a clean run (exit seen, both streams at EOF, any kill confirmed);
otherwise it is told to quit and its files are removed. FIFOs on a bind mount work
because the docker engine shares this machine's kernel, which the workspace bind
mount needs anyway.

Every process still runs inside the container, under its cgroup, capability set and
``no-new-privileges``: the exec server is itself a ``docker exec`` of the container.
"""

from remote_sandbox.providers.docker.container import DockerError
from remote_sandbox.providers.docker.exec_server import MAX_IDLE_WORKERS
from remote_sandbox.providers.docker.provider import DockerProvider

__all__ = ["MAX_IDLE_WORKERS", "DockerError", "DockerProvider"]
