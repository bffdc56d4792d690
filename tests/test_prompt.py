"""The system prompt says where the model's hands are and carries the memory files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.prompt import system_prompt


@pytest.fixture
def user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    (config / "tether").mkdir(parents=True)
    return config / "tether"


def test_environment_and_memory_files(tmp_path: Path, user_config: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "AGENTS.md").write_text("Run tests with make check.\n")
    (project / "CLAUDE.md").write_text("Prefer small commits.\n")
    (user_config / "AGENTS.md").write_text("The user likes British spelling.\n")
    text = system_prompt(
        workdir="/workspace", sandbox_os="Linux 6.1 x86_64", project_dir=project, today=dt.date(2026, 11, 26)
    )
    assert "Workspace (the project, as the sandbox sees it): /workspace" in text
    assert "Sandbox OS: Linux 6.1 x86_64" in text
    assert "Today's date: 2026-11-26" in text
    assert '<memory source="project AGENTS.md">\nRun tests with make check.' in text
    assert '<memory source="project CLAUDE.md">\nPrefer small commits.' in text
    assert '<memory source="user AGENTS.md">\nThe user likes British spelling.' in text
    # The user's own file comes before the project's, so the project can refine it.
    assert text.index("user AGENTS.md") < text.index("project AGENTS.md")
    assert "Plan mode" not in text


def test_plan_mode_is_announced(tmp_path: Path, user_config: Path) -> None:
    text = system_prompt(workdir="/w", sandbox_os="", project_dir=tmp_path, plan_mode=True)
    assert "Plan mode is on" in text
    assert "Sandbox OS: a POSIX system" in text


def test_the_prompt_is_stable_for_a_session(tmp_path: Path, user_config: Path) -> None:
    day = dt.date(2026, 1, 2)
    first = system_prompt(workdir="/w", sandbox_os="Linux", project_dir=tmp_path, today=day)
    assert first == system_prompt(workdir="/w", sandbox_os="Linux", project_dir=tmp_path, today=day)
