"""The system prompt: who the model is, where its hands are, and the project's memory files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from platformdirs import user_config_dir

MEMORY_FILES = ("AGENTS.md", "CLAUDE.md")
MEMORY_MAX_CHARS = 40_000


def system_prompt(
    *,
    workdir: str,
    sandbox_os: str,
    project_dir: Path,
    plan_mode: bool = False,
    workspace_mode: str = "",
    today: dt.date | None = None,
) -> str:
    """The system prompt text for a session in ``project_dir`` whose tools run in ``workdir``."""
    today = today or dt.date.today()
    parts = [
        "You are tether, a coding agent working in a terminal with the user. You act through "
        "tools that run in a sandbox, not on the user's machine: Bash, Read, Write and Edit "
        "all work inside it. Be direct and concise; do the work rather than describing it.",
        "<environment>\n"
        f"Workspace (the project, as the sandbox sees it): {workdir}\n"
        f"Sandbox OS: {sandbox_os or 'a POSIX system'}\n"
        f"Today's date: {today.isoformat()}\n"
        "</environment>",
    ]
    if workspace_mode == "direct":
        parts.append(
            f"The workspace is the user's project directory ({project_dir}) itself, mounted into the "
            "sandbox: your edits change the user's files directly."
        )
    elif workspace_mode == "copy":
        parts.append(
            f"The workspace is a copy of the user's project ({project_dir}), uploaded when the session "
            "started; your changes stay in the sandbox until the user reviews and applies them."
        )
    if plan_mode:
        parts.append(
            "Plan mode is on: you may only use read-only tools (Read, Glob, Grep, TodoWrite). "
            "Investigate, then present your plan with the ExitPlanMode tool for the user to approve; "
            "do not change anything until they do."
        )
    for label, path in _memory_files(project_dir):
        text = path.read_text(encoding="utf-8", errors="replace")[:MEMORY_MAX_CHARS]
        parts.append(f'<memory source="{label}">\n{text}\n</memory>')
    return "\n\n".join(parts)


def _memory_files(project_dir: Path) -> list[tuple[str, Path]]:
    found = []
    user_dir = Path(user_config_dir("tether"))
    for name in MEMORY_FILES:
        for label, path in ((f"user {name}", user_dir / name), (f"project {name}", project_dir / name)):
            if path.is_file():
                found.append((label, path))
    return found
