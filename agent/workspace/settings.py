"""``[workspace]`` settings: which mode, what to leave out, how much to carry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.permissions import SettingsError, read_settings_file
from protos.recipes import parse_size

MODES = ("direct", "copy")
"""direct: the project directory is the workspace; copy: the project is uploaded into the sandbox."""

DEFAULT_MAX_FILE_BYTES = 50 << 20
"""A file larger than this is neither uploaded nor checkpointed (and is listed as left out)."""

DEFAULT_MAX_TOTAL_BYTES = 1 << 30
"""A copy workspace carries at most this much of the project; the largest files are left out first."""


@dataclass
class WorkspaceSettings:
    """What the settings files say about workspaces (the command line may override ``mode``)."""

    mode: str = ""
    """``direct``, ``copy``, or empty: the default for the host (direct for the embedded one)."""
    exclude: list[str] = field(default_factory=list)
    """Extra gitignore-style patterns left out of uploads and checkpoints."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Per-file cap."""
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    """Cap on a whole upload."""

    @classmethod
    def load(cls, paths: list[Path]) -> WorkspaceSettings:
        """Read ``[workspace]`` from each existing TOML file; later files win, excludes add up."""
        settings = cls()
        for path in paths:
            data = read_settings_file(path)
            if data is None:
                continue
            section = data.get("workspace", {})
            if not isinstance(section, dict):
                raise SettingsError(f"{path}: [workspace] must be a table")
            unknown = sorted(set(section) - {"mode", "exclude", "max_file_size", "max_total_size"})
            if unknown:
                raise SettingsError(
                    f"{path}: unknown workspace settings {', '.join(unknown)} "
                    "(known: mode, exclude, max_file_size, max_total_size)"
                )
            mode = section.get("mode", settings.mode)
            if mode not in ("", *MODES):
                raise SettingsError(f"{path}: workspace.mode must be one of {', '.join(MODES)}, not {mode!r}")
            settings.mode = mode
            exclude = section.get("exclude", [])
            if not isinstance(exclude, list) or not all(isinstance(item, str) for item in exclude):
                raise SettingsError(f"{path}: workspace.exclude must be a list of strings (gitignore-style patterns)")
            settings.exclude.extend(exclude)
            for key, attr in (("max_file_size", "max_file_bytes"), ("max_total_size", "max_total_bytes")):
                if key in section:
                    try:
                        setattr(settings, attr, parse_size(section[key], f"workspace.{key}"))
                    except ValueError as exc:
                        raise SettingsError(f"{path}: {exc}") from exc
        return settings
