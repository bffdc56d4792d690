"""The typed errors of the session store, each with a message a user can read."""

from __future__ import annotations

from pathlib import Path


class SessionStoreError(Exception):
    """The session store could not read or write something on disk."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path: Path | None = path
        """The file or directory the failure concerns, if there is one."""


class SessionNotFound(SessionStoreError):
    """No session has the given id or id prefix."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session matches {session_id!r}")
        self.session_id: str = session_id
        """The id or prefix that matched nothing."""


class AmbiguousSessionId(SessionStoreError):
    """An id prefix matches more than one session."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        shown = ", ".join(sorted(candidates)[:10])
        more = f" and {len(candidates) - 10} more" if len(candidates) > 10 else ""
        super().__init__(f"session id prefix {prefix!r} matches {len(candidates)} sessions: {shown}{more}")
        self.prefix: str = prefix
        """The prefix that was too short."""
        self.candidates: list[str] = sorted(candidates)
        """Every session id the prefix matches."""


def describe_os_error(action: str, path: Path, error: OSError) -> SessionStoreError:
    """Turn an OSError into a SessionStoreError that names the path and the cause."""
    reason = error.strerror or str(error)
    return SessionStoreError(f"could not {action} {path}: {reason}", path)
