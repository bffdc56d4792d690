"""Resource limits of local sandboxes: a cgroup per sandbox where this host may make one, rlimits where not.

A cgroup bounds a sandbox's whole process tree: every process it starts, however
it forks, counts against its pids, memory and cpu limits, and destroying the
sandbox kills every process in it. cgroup v2 (the unified hierarchy, at the root
when run as root, or in a delegated subtree) is used when its controllers can be
enabled; otherwise the v1 ``pids``, ``memory`` and ``cpu`` hierarchies, each when
writable. Without either, the fallback is ``RLIMIT_AS``, which holds per
process, not per sandbox (N processes may use N times the limit); pids and cpu
then stay unlimited: ``RLIMIT_NPROC`` counts every process of the host user, not
of the sandbox, and root ignores it. ``LimitPlan.describe`` says which hold.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path

from protos.tether.sandbox.v1 import sandbox_pb2 as pb

log = logging.getLogger("remote_sandbox.local")

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where cgroup hierarchies are mounted."""

GROUP_NAME = "tether-sandboxes"
"""The directory under a writable cgroup that holds one cgroup per sandbox."""

DEFAULT_PIDS_LIMIT = 1024
"""Pids limit when the recipe sets none, as for docker: an unlimited sandbox lets a fork bomb reach the host."""

_CPU_PERIOD_US = 100_000
_V1_CONTROLLERS = ("pids", "memory", "cpu")


@dataclass
class SandboxCgroup:
    """One sandbox's cgroup: a directory per hierarchy, written by the host, joined by its first process."""

    dirs: list[Path]
    """The sandbox's directory in each hierarchy (one under cgroup v2)."""

    def join_script(self) -> str:
        """Shell that moves itself into the cgroup; what it then ``exec``s, and every child, is in it too."""
        return "".join(f"echo $$ >{shlex.quote(str(d / 'cgroup.procs'))} || exit 125\n" for d in self.dirs)

    def pids(self) -> set[int]:
        """Every process in the cgroup now."""
        found: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
        return found

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup, again until none is left (forks race a single pass)."""
        kill_file = self.dirs[0] / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        for _ in range(100):
            left = self.pids()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the directories; False if a process is still in one (it is left for the next start)."""
        removed = True
        for directory in self.dirs:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


@dataclass
class LimitPlan:
    """How this host limits local sandboxes, found once when the provider starts."""

    kind: str
    """``cgroup v2``, ``cgroup v1`` or ``rlimit``."""
    parents: dict[str, Path] = field(default_factory=dict)
    """Per controller (``pids``, ``memory``, ``cpu``), the directory sandboxes' cgroups are made in."""

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT) -> LimitPlan:
        """What this host allows: a writable cgroup v2 subtree, else writable v1 hierarchies, else rlimits."""
        plan = _detect_v2(root) or _detect_v1(root)
        if plan is None:
            return cls("rlimit")
        for parent in set(plan.parents.values()):
            _remove_leftovers(parent)
        return plan

    def describe(self, limits: pb.Limits) -> str:
        """Exactly which of ``limits`` (pids defaulted) hold, and how, in one line."""
        pids = limits.pids or DEFAULT_PIDS_LIMIT
        held, free = [], []
        if "pids" in self.parents:
            held.append(f"pids <= {pids}")
        else:
            free.append("pids")
        if limits.memory_bytes and "memory" in self.parents:
            held.append(f"memory <= {_size(limits.memory_bytes)}")
        elif limits.memory_bytes and self.kind == "rlimit":
            held.append(f"memory <= {_size(limits.memory_bytes)} per process (RLIMIT_AS, not per sandbox)")
        elif not limits.memory_bytes or "memory" not in self.parents:
            free.append("memory")
        if limits.cpus and "cpu" in self.parents:
            held.append(f"cpu <= {limits.cpus:g}")
        else:
            free.append("cpu")
        text = f"{', '.join(held)} ({self.kind})" if held else ""
        if free:
            text += ("; " if text else "") + f"no {'/'.join(free)} limit"
        return text

    def create(self, name: str, limits: pb.Limits) -> SandboxCgroup | None:
        """Make and configure the sandbox's cgroup; None when this host has none to make."""
        if not self.parents:
            return None
        dirs: dict[str, Path] = {}
        for controller, parent in self.parents.items():
            directory = parent / name
            directory.mkdir(exist_ok=True)
            dirs[controller] = directory
        pids = str(limits.pids or DEFAULT_PIDS_LIMIT)
        memory = limits.memory_bytes
        quota = int(limits.cpus * _CPU_PERIOD_US) if limits.cpus else 0
        if self.kind == "cgroup v2":
            directory = dirs["pids"]
            _write(directory / "pids.max", pids)
            if memory:
                _write(directory / "memory.max", str(memory))
                _write(directory / "memory.swap.max", "0", optional=True)
            if quota:
                _write(directory / "cpu.max", f"{quota} {_CPU_PERIOD_US}")
        else:
            if "pids" in dirs:
                _write(dirs["pids"] / "pids.max", pids)
            if memory and "memory" in dirs:
                _write(dirs["memory"] / "memory.limit_in_bytes", str(memory))
                _write(dirs["memory"] / "memory.memsw.limit_in_bytes", str(memory), optional=True)
            if quota and "cpu" in dirs:
                _write(dirs["cpu"] / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
                _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
        return SandboxCgroup(sorted(set(dirs.values())))

    def wrapper(self, cgroup: SandboxCgroup | None, limits: pb.Limits) -> list[str]:
        """The host command line that puts what follows it under the limits: joins the cgroup, or sets rlimits.

        A shell that ``exec``s the command rather than a ``preexec_fn``: forking a
        process with gRPC's threads and running Python in the child can crash it.
        """
        if cgroup is not None:
            script = cgroup.join_script()
        elif self.kind == "rlimit" and limits.memory_bytes:
            script = f"ulimit -v {max(limits.memory_bytes // 1024, 1)} || exit 125\n"
        else:
            return []
        return ["/bin/sh", "-c", script + 'exec "$@"', "tether-limits"]


def _detect_v2(root: Path) -> LimitPlan | None:
    """A cgroup v2 directory where pids, memory and cpu can be enabled for children, or None."""
    if not (root / "cgroup.controllers").exists():
        return None
    candidates = [root]
    with contextlib.suppress(OSError, ValueError):
        own = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        # A delegated subtree: our own cgroup holds us, so its parent is the one that may have children.
        candidates.append((root / own[3:].lstrip("/")).parent)
    for candidate in candidates:
        group = candidate / GROUP_NAME
        try:
            available = set((candidate / "cgroup.controllers").read_text().split())
            wanted = [c for c in ("pids", "memory", "cpu") if c in available]
            if "pids" not in wanted:
                continue
            _write(candidate / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
            group.mkdir(exist_ok=True)
            _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except OSError:
            continue
        return LimitPlan("cgroup v2", {c: group for c in wanted})
    return None


def _detect_v1(root: Path) -> LimitPlan | None:
    """The v1 hierarchies of pids, memory and cpu this host may make groups in, or None."""
    parents: dict[str, Path] = {}
    for controller in _V1_CONTROLLERS:
        hierarchy = root / controller
        if not (hierarchy / "cgroup.procs").exists() or (hierarchy / "cgroup.controllers").exists():
            continue
        group = hierarchy / GROUP_NAME
        try:
            group.mkdir(exist_ok=True)
        except OSError:
            continue
        parents[controller] = group
    if "pids" not in parents:
        return None
    return LimitPlan("cgroup v1", parents)


def cgroup_name(sandbox_id: str) -> str:
    """A sandbox's cgroup name: the host's pid first, so a later host knows which ones are left over."""
    return f"{os.getpid()}-{sandbox_id}"


def _remove_leftovers(parent: Path) -> None:
    """Remove the sandbox cgroups of hosts that are gone (a cgroup still in use cannot be removed, so it stays).

    Another host's cgroup is never touched while that host lives: it may be empty
    between its making and its first process.
    """
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            pid, _, _ = child.name.partition("-")
            if child.is_dir() and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    child.rmdir()


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: Path, value: str, *, optional: bool = False) -> None:
    """Write one cgroup file; a missing optional one (no swap accounting, say) is fine."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        if optional and exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):
            return
        raise
    try:
        os.write(fd, value.encode())
    except OSError:
        if not optional:
            raise
    finally:
        os.close(fd)


def _size(count: int) -> str:
    """Bytes as MiB or GiB, whichever reads better."""
    return f"{count / (1 << 30):g} GiB" if count >= 1 << 30 and count % (1 << 30) == 0 else f"{count / (1 << 20):g} MiB"
