"""What a driver chose (the command line, settings), and the names derived from it before anything starts.

Kept free of heavy imports: the TUI reads it to draw its first screen while the
harness itself (gRPC, the session store, the SDK) is still being imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.embedded_host import SharedHost
    from session.store import SessionLog

DEFAULT_MODEL = "claude-sonnet-5-5"
"""The model used when neither ``--model`` nor ``TETHER_MODEL`` names one."""

EMBEDDED = "embedded"
"""The host-list entry that names the embedded host."""

HEARTBEAT_S = 5.0
"""Seconds between two looks at the sandbox host (the TUI's status bar: host state and round trip)."""


class HarnessError(Exception):
    """Start-up failed in a way the user must fix; the message says how."""


@dataclass
class HarnessOptions:
    """Everything a driver chose on the command line or in config."""

    project_dir: Path
    model: str = ""
    """Empty: ``TETHER_MODEL`` or the default."""
    sandbox: str = ""
    """Host URLs (grpc://, grpcs://, unix://, ``embedded``), comma-separated, tried in order;
    empty = ``[sandbox] hosts`` in the user's settings, else the embedded host."""
    sandbox_token: str = ""
    sandbox_ca_file: str = ""
    recipe: str = ""
    """A recipe name or TOML file; empty = default."""
    max_turns: int | None = None
    resume: str = ""
    """A session id (or unique prefix) to resume."""
    continue_latest: bool = False
    """Continue the newest session of this project."""
    permission_mode: str = "default"
    """default | acceptEdits | plan | bypassPermissions"""
    allowed_tools: list[str] = field(default_factory=list)
    """Extra allow rules from the command line, e.g. ``Bash(git status:*)``."""
    disallowed_tools: list[str] = field(default_factory=list)
    """Extra deny rules from the command line."""
    workspace: str = ""
    """``direct`` | ``copy`` | empty: the settings' choice, else direct with the embedded host, copy with a remote one."""
    verbose: bool = False
    """Say what is set up (workspace mode, sandbox) as status notices."""
    shared_host: SharedHost | None = None
    """An embedded host lent by the process that runs us (the resident harness); None = start our own."""
    resumed_log: SessionLog | None = None
    """The session to resume, already opened by the driver (the TUI draws it before the harness is imported);
    None: ``resume`` / ``continue_latest`` are opened at start."""
    preload_sdk: bool = True
    """Begin importing the ``anthropic`` SDK (seconds of CPU) as start-up begins; False: the driver begins it
    when it suits it (the TUI: once a resumed conversation is on screen, which the import would slow)."""
    heartbeat_s: float = 0.0
    """Seconds between two looks at the sandbox host (its state and round trip, for a status bar); 0: none.
    The TUI uses ``HEARTBEAT_S``."""

    def open_resumed(self) -> SessionLog | None:
        """The session ``resume`` or ``continue_latest`` names, opened; None for a new session.

        Raises ``HarnessError`` with what to do when there is no such session or it cannot be read.
        """
        if self.resumed_log is not None:
            return self.resumed_log
        if not (self.resume or self.continue_latest):
            return None
        from session.store import AmbiguousSessionId, SessionNotFound, SessionStore, SessionStoreError

        store = SessionStore()
        try:
            if self.resume:
                return store.open(self.resume)
            log = store.latest(self.project_dir)
        except AmbiguousSessionId as exc:
            raise HarnessError(f"tether: cannot resume: {exc}; give more of the id") from None
        except SessionNotFound:
            raise HarnessError(
                f"tether: cannot resume: no session matches {self.resume!r} (`tether sessions list` shows them)"
            ) from None
        except SessionStoreError as exc:
            raise HarnessError(f"tether: cannot open the session: {exc}") from None
        if log is None:
            raise HarnessError(f"tether: no session to continue in {self.project_dir}")
        return log

    @property
    def model_name(self) -> str:
        """The model this session talks to: ``--model``, else ``TETHER_MODEL``, else the default."""
        return self.model or os.environ.get("TETHER_MODEL") or DEFAULT_MODEL

    @property
    def first_host(self) -> str:
        """The first host named on the command line (``embedded`` if none): shown until a sandbox is leased."""
        return self.sandbox.split(",")[0].strip() or EMBEDDED
