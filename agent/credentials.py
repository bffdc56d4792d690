"""Whether there is a model to talk to: checked before anything slow is imported."""

from __future__ import annotations

import os


class MissingCredentials(Exception):
    """Neither an API key nor a base URL is configured."""


def check_credentials(environ: dict[str, str] | None = None) -> None:
    """Raise MissingCredentials with one clear line if there is nothing to talk to."""
    env = os.environ if environ is None else environ
    if not env.get("ANTHROPIC_API_KEY") and not env.get("ANTHROPIC_AUTH_TOKEN") and not env.get("ANTHROPIC_BASE_URL"):
        raise MissingCredentials(
            "tether: no model credentials: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL for "
            "a compatible endpoint) and run again."
        )
