"""How a local sandbox isolates its commands: bubblewrap's command line, or nothing (and a loud warning).

With bubblewrap every sandbox gets its own namespaces (no network unless the
recipe asks), a read-only view of the host's system directories, a minimal
``/etc``, its sandbox's own ``/tmp`` (HOME is ``/tmp/home``), the workspace
read-write at the workdir and the spill area at ``/tmp/tether-spill``. It never
sees the user's home, the session store or any credential, and its environment
is built from scratch.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from remote_sandbox.providers.base import ExecSpec, SandboxRecord

SANDBOX_HOME = "/tmp/home"
"""HOME of a bubblewrapped command (inside its sandbox's own /tmp)."""

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH of a bubblewrapped command."""

UNSAFE_WARNING = (
    "no isolation: bubblewrap is not usable on this host ({reason}), so commands run as plain "
    "processes of the host user and can read and change anything that user can. This is no security boundary."
)
"""The warning every sandbox of an unisolated local provider carries."""

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_ENTRIES = (
    "passwd",
    "group",
    "hosts",
    "hostname",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "networks",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "alternatives",
    "ssl",
    "pki",
    "ca-certificates",
    "ca-certificates.conf",
    "crypto-policies",
    "os-release",
    "debian_version",
    "lsb-release",
    "mime.types",
    "magic",
    "inputrc",
    "terminfo",
    "shells",
    "locale.alias",
    "gitconfig",
    "bash.bashrc",
    "profile",
    "perl",
    "python3*",
)
"""What of the host's /etc a bubblewrapped command sees (read-only): enough to run, no secrets."""

# The launcher, run by the sandbox's own Python 3.8+ (`-I -S -c`), with the socket's fd

_PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
# Argv commands go through a tiny shell only to change directory; `exec` keeps the pid.
_ARGV_LAUNCHER = 'cd -- "$1" || exit; shift; exec "$@"'


def probe_bwrap(bwrap: str) -> str | None:
    """None if bubblewrap can make a sandbox here, else why not."""
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    args += system_binds() + ["--proc", "/proc", "--dev", "/dev", "--", "/bin/sh", "-c", ":"]
    try:
        result = subprocess.run(args, capture_output=True, timeout=30, check=False, env={"PATH": SANDBOX_PATH})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not run: {exc}"
    if result.returncode != 0:
        return f"{bwrap} failed: {result.stderr.decode(errors='replace').strip() or result.returncode}"
    return None


def system_binds() -> list[str]:
    """Read-only binds of the host's system directories, symlinks kept as on merged-/usr systems."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def etc_binds() -> list[str]:
    """Read-only binds of the few /etc entries commands need; never the whole of /etc."""
    args = ["--dir", "/etc"]
    seen: set[str] = set()
    for pattern in _ETC_ENTRIES:
        for path in sorted(glob.glob(f"/etc/{pattern}")):
            if path in seen or not os.path.exists(path):
                continue
            seen.add(path)
            args += ["--ro-bind", path, path]
    if "/etc/mtab" not in seen:
        args += ["--symlink", "../proc/self/mounts", "/etc/mtab"]
    return args


def bwrap_args(bwrap: str, static_args: list[str], record: SandboxRecord, tmp: Path, spill: Path) -> list[str]:
    """bubblewrap up to its environment: namespaces, mounts, the workdir; ``--clearenv`` last."""
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if record.recipe.network:
        args.append("--share-net")
    args += ["--hostname", "sandbox", *static_args, "--proc", "/proc", "--dev", "/dev"]
    args += ["--bind", str(tmp), "/tmp"]
    args += ["--bind", str(spill), record.spill_mount]
    args += ["--bind", str(record.workspace), record.workdir]
    return [*args, "--chdir", record.workdir, "--clearenv"]


def command_line(
    record: SandboxRecord, spec: ExecSpec, cwd_file: str | None, bwrap: bool, tmp: Path
) -> tuple[list[str], dict[str, str]]:
    """The argv (as the sandbox runs it) and complete environment of ``spec``."""
    if spec.shell is not None:
        script = f"cd -- {shlex.quote(spec.cwd)} || exit\n"
        if cwd_file is not None:
            # An EXIT trap reports the directory even when the script calls `exit`.
            script += f"trap {shlex.quote(f'pwd >{shlex.quote(cwd_file)}')} EXIT\n"
        argv = ["/bin/sh", "-c", script + spec.shell]
    else:
        assert spec.argv is not None
        argv = ["/bin/sh", "-c", _ARGV_LAUNCHER, "sh", spec.cwd, *spec.argv]
    env = {"LANG": "C.UTF-8", "TERM": "dumb"}
    if bwrap:
        env.update(PATH=SANDBOX_PATH, HOME=SANDBOX_HOME, TMPDIR="/tmp")
    else:
        env.update(PATH=os.environ.get("PATH") or SANDBOX_PATH, HOME=str(tmp / "home"), TMPDIR=str(tmp))
    env.update(record.recipe.env)
    env.update(spec.env)
    return argv, env


def sandbox_python() -> str | None:
    """A Python 3 interpreter a bubblewrapped command can run (it sees only the system directories), or None."""
    candidates = [os.path.realpath(sys.executable), *_PYTHON_CANDIDATES]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        inside = any(real.startswith(d + "/") for d in _SYSTEM_DIRS)
        if inside and os.access(real, os.X_OK) and re.search(r"python3(\.\d+)?\Z", real):
            return real
    return None
