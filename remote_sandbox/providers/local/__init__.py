"""The local provider: a directory per sandbox, commands under bubblewrap when it works.

One module per job: ``provider`` (lifecycle), ``isolation`` (bubblewrap's command
line, or none), ``limits`` (cgroups or rlimits), ``launcher`` and
``launcher_main`` (the resident command launcher, host side and sandbox side),
``processes`` (commands as the shared exec loop drives them).

Under bubblewrap, each sandbox has one bubblewrap for its whole life, holding
its namespaces and running a small resident launcher (``launcher_main``, on the
Python 3 of the host's ``/usr``) that starts each command with one
``posix_spawn``: starting bubblewrap costs 5-50 ms, a command through the
launcher about a millisecond. When no such Python exists, or ``resident=False``,
every command gets its own bubblewrap instead. Without bubblewrap (not installed,
or namespaces are not allowed here) commands are plain processes of the host
user: no security boundary, and the provider says so loudly.

Every command runs in its own process group (through the launcher, in the
launcher's session, which has no terminal; otherwise in a session of its own).
When it ends, times out, or its consumer goes away, the whole group is killed
with SIGKILL. A
process that leaves its group (``setsid``) lives on in the sandbox, as in a
container, until the sandbox is destroyed: then bubblewrap dies and its pid
namespace, with every process in it, goes too; so it does when the host dies
(``--die-with-parent``). With one bubblewrap per command, such a process goes
when its command ends.
"""

from remote_sandbox.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
