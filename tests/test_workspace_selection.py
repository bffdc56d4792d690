"""Which files of a local project a copy workspace carries, and which settings change that."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.permissions import SettingsError
from agent.workspace.selection import select_project_files
from agent.workspace.settings import WorkspaceSettings

BIG = 1 << 40


def chosen(project: Path, **kwargs) -> list[str]:
    """The paths chosen, with generous caps unless given."""
    kwargs.setdefault("max_file_bytes", BIG)
    kwargs.setdefault("max_total_bytes", BIG)
    return [item.rel for item in select_project_files(project, **kwargs).files]


def make(project: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> text) under ``project``."""
    for rel, content in files.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def git(project: Path, *args: str) -> None:
    """Run git in ``project``."""
    subprocess.run(
        ["git", "-C", str(project), *args],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )


def test_outside_git_defaults_and_gitignore_files_leave_things_out(tmp_path: Path) -> None:
    make(tmp_path, {
        "src/app.py": "x", "node_modules/a/index.js": "x", ".venv/lib/x.py": "x", "build/out.o": "x",
        "src/__pycache__/app.cpython-311.pyc": "x", ".gitignore": "*.log\n!keep.log\n", "a.log": "x",
        "keep.log": "x", "sub/.gitignore": "secret.txt\n", "sub/secret.txt": "x", "sub/open.txt": "x",
        "secret.txt": "top level: not covered by sub/.gitignore",
    })  # fmt: skip
    assert chosen(tmp_path) == [".gitignore", "keep.log", "secret.txt", "src/app.py", "sub/.gitignore", "sub/open.txt"]


def test_in_git_tracked_untracked_and_the_repository_itself(tmp_path: Path) -> None:
    make(tmp_path, {"src/app.py": "x", "build/script.sh": "tracked build dir", ".gitignore": "ignored.txt\n"})
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "c")
    make(
        tmp_path,
        {"new.py": "untracked", "ignored.txt": "x", "dist/bundle.js": "untracked output", "node_modules/x.js": "x"},
    )
    paths = chosen(tmp_path)
    assert "build/script.sh" in paths, "a tracked file under build/ is source"
    assert "dist/bundle.js" not in paths and "ignored.txt" not in paths and "node_modules/x.js" not in paths
    assert "new.py" in paths and "src/app.py" in paths
    assert ".git/HEAD" in paths and any(p.startswith(".git/objects/") for p in paths)


def test_settings_excludes_and_size_caps_are_listed_as_left_out(tmp_path: Path) -> None:
    make(
        tmp_path, {"a.txt": "a" * 10, "b.txt": "b" * 20, "big.bin": "z" * 1000, "data/huge.csv": "x", "c.txt": "c" * 30}
    )
    selection = select_project_files(tmp_path, exclude=["data/"], max_file_bytes=500, max_total_bytes=35)
    assert [item.rel for item in selection.files] == ["a.txt", "b.txt"]
    reasons = dict(selection.left_out)
    assert "larger than" in reasons["big.bin"]
    assert "total cap" in reasons["c.txt"]
    assert "data/huge.csv" not in reasons and selection.ignored_count >= 1


def test_special_files_are_left_out_by_name(tmp_path: Path) -> None:
    make(tmp_path, {"a.txt": "a"})
    os.mkfifo(tmp_path / "pipe")
    selection = select_project_files(tmp_path, max_file_bytes=BIG, max_total_bytes=BIG)
    assert [item.rel for item in selection.files] == ["a.txt"]
    assert selection.left_out == [("pipe", "a fifo")]


def test_workspace_settings_parse_and_refuse_nonsense(tmp_path: Path) -> None:
    user, project = tmp_path / "user.toml", tmp_path / "project.toml"
    user.write_text('[workspace]\nmode = "copy"\nexclude = ["*.bin"]\nmax_file_size = "2m"\n')
    project.write_text('[workspace]\nexclude = ["data/"]\nmax_total_size = 1000\n')
    settings = WorkspaceSettings.load([user, project, tmp_path / "missing.toml"])
    assert settings.mode == "copy" and settings.exclude == ["*.bin", "data/"]
    assert settings.max_file_bytes == 2 << 20 and settings.max_total_bytes == 1000
    for bad in (
        '[workspace]\nmode = "both"\n',
        '[workspace]\nexclude = "x"\n',
        '[workspace]\nmax_file_size = "lots"\n',
        "[workspace]\nmodee = 1\n",
    ):
        project.write_text(bad)
        with pytest.raises(SettingsError) as caught:
            WorkspaceSettings.load([project])
        assert str(project) in str(caught.value)
