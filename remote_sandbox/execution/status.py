"""How a command ended: an exit code it chose, or a signal that killed it, and whether that is known or inferred."""

from __future__ import annotations

from dataclasses import dataclass

_SIGNAL_MAX = 64


@dataclass(frozen=True)
class ExitStatus:
    """The end of a command's leader, as ``Exited`` reports it."""

    exit_code: int
    """The code the leader exited with; -1 when a signal killed it."""
    signal: int = 0
    """The signal that killed the leader, or 0."""
    exact: bool = True
    """False when a signal was inferred from a shell's 128+N: it may be an explicit ``exit 128+N``."""

    @classmethod
    def from_wait(cls, returncode: int | None) -> ExitStatus:
        """From a Popen-style status of the leader itself (negative: killed by that signal); exact."""
        if returncode is None:
            return cls(-1, 0, exact=False)
        if returncode < 0:
            return cls(-1, -returncode)
        return cls(returncode)

    @classmethod
    def from_shell(cls, status: int | None, exited_itself: bool = False) -> ExitStatus:
        """From a status as a shell's ``$?`` (or bubblewrap) reports it, where 128+N may mean signal N.

        ``exited_itself`` says the command is known to have called ``exit`` (its
        shell's EXIT trap ran), so 128+N is a code it chose, not a signal.
        """
        if status is None:
            return cls(-1, 0, exact=False)
        if exited_itself:
            return cls(status)
        if 128 < status <= 128 + _SIGNAL_MAX:
            # Shells and bubblewrap report death by signal N as 128+N; an explicit `exit 137`
            # looks the same and is far rarer, so it reads as a signal, as docker does.
            return cls(-1, status - 128, exact=False)
        return cls(status)
