"""How a sandbox host runs: ``HostConfig``, its defaults and limits, and where state lives.

Import-light on purpose (no gRPC, no protobuf): the command line reads its
defaults from here and ``--help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_EXEC_TIMEOUT_S = 120.0
"""A command's time limit when the request gives none."""

DEFAULT_OUTPUT_CAP = 1 << 20
"""Bytes of output streamed when the request gives no cap."""

MAX_MESSAGE_BYTES = 16 << 20
"""Largest gRPC message either way; file data travels in far smaller chunks."""

TRANSPORT_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES
"""What gRPC itself lets in: a message between this and ``MAX_MESSAGE_BYTES`` reaches
the handler, which refuses it with a message naming the limit. Past this, gRPC refuses
it with its own words (still RESOURCE_EXHAUSTED)."""

DEFAULT_MAX_WRITE_BYTES = 1 << 30
"""Largest file WriteFile accepts unless configured otherwise."""

DEFAULT_MAX_EXECS_PER_SANDBOX = 64
"""Commands one sandbox may run at once unless configured otherwise."""

DEFAULT_MAX_SANDBOXES_PER_TENANT = 64
"""Live sandboxes one tenant may have unless configured otherwise."""

DEFAULT_REAP_INTERVAL_S = 30.0
"""How often idle sandboxes are looked for unless configured otherwise."""


def default_state_dir() -> Path:
    """Where a host keeps its sandboxes unless told otherwise."""
    import platformdirs

    return Path(platformdirs.user_state_dir("tether")) / "sandbox-host"


class HostStartError(Exception):
    """The host could not start (address in use, state dir locked, bad TLS files...); the message says why."""


@dataclass
class HostConfig:
    """How to run a sandbox host."""

    listen: str
    """``HOST:PORT`` (port 0 picks a free one) or ``unix:///path``."""
    provider: str = "local"
    """``local`` or ``docker``."""
    tokens: dict[str, str] = field(default_factory=dict)
    """Bearer token -> tenant. At least one is required."""
    state_dir: Path = field(default_factory=default_state_dir)
    """Sandboxes' directories, the host id and the lock live here."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key``, the server speaks TLS."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    default_image: str = ""
    """docker provider: the image of recipes that name none."""
    destroy_on_exit: bool = True
    """Destroy every sandbox when the host stops (else leave them for inspection)."""
    allow_base: list[Path] = field(default_factory=list)
    """local provider: directories a recipe's ``base`` may be copied from."""
    max_sandboxes_per_tenant: int = DEFAULT_MAX_SANDBOXES_PER_TENANT
    """Provision past this many live sandboxes of one tenant is RESOURCE_EXHAUSTED."""
    max_execs_per_sandbox: int = DEFAULT_MAX_EXECS_PER_SANDBOX
    """Exec past this many commands running at once in one sandbox is RESOURCE_EXHAUSTED."""
    max_write_bytes: int = DEFAULT_MAX_WRITE_BYTES
    """WriteFile of a file larger than this is RESOURCE_EXHAUSTED (checked while it streams in)."""
    reap_interval_s: float = DEFAULT_REAP_INTERVAL_S
    """How often sandboxes idle past their recipe's TTL are looked for."""
    allow_workspace_roots: list[Path] = field(default_factory=list)
    """Directories under which a Provision may name a direct workspace (``--allow-workspace-root``); none = refused."""

    def check_limits(self) -> None:
        """Raise ``HostStartError`` unless every limit is more than 0."""
        for name in ("max_sandboxes_per_tenant", "max_execs_per_sandbox", "max_write_bytes", "reap_interval_s"):
            if not getattr(self, name) > 0:
                raise HostStartError(f"{name.replace('_', ' ')} must be more than 0, not {getattr(self, name)!r}")
