"""Which files of a local project a copy workspace starts with.

In a git repository: the tracked files, the untracked ones git does not ignore,
and the repository itself (``.git/``), so ``git status``, ``diff`` and ``log``
work in the sandbox. Outside git: every file, less ``.gitignore``-style rules.
Either way the defaults (dependencies, virtualenvs, build outputs), the
settings' ``exclude`` patterns and the size caps apply, and what is left out is
listed, never dropped silently.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from protos.workspace_rules import BUILD_OUTPUTS, DEFAULT_EXCLUDES, DEPENDENCY_DIRS, IgnoreRules, compile_rules

GIT_TIMEOUT_S = 60.0
"""Bound on ``git ls-files`` in a huge repository."""


@dataclass
class LocalFile:
    """One file (or symlink) chosen for upload."""

    rel: str
    """Path relative to the project, "/"-separated (surrogateescape for non-UTF-8 names)."""
    mode: int
    """``st_mode`` with type bits."""
    size: int
    """Bytes (a symlink's: its target's length)."""


@dataclass
class Selection:
    """The outcome of choosing: what goes, what stays, and why."""

    files: list[LocalFile] = field(default_factory=list)
    """Chosen files and symlinks, in path order (directories are implied)."""
    left_out: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` for everything seen and not chosen, except what ignore rules leave out."""
    ignored_count: int = 0
    """Paths left out by ignore rules and defaults (not listed one by one: a node_modules has thousands)."""
    git: bool = False
    """Whether the project is a git repository (``.git/`` is carried along)."""

    @property
    def total_bytes(self) -> int:
        """Bytes of everything chosen."""
        return sum(item.size for item in self.files)


def select_project_files(
    project_dir: Path,
    *,
    exclude: list[str] | tuple[str, ...] = (),
    max_file_bytes: int,
    max_total_bytes: int,
) -> Selection:
    """Choose what of ``project_dir`` a copy workspace carries."""
    selection = Selection()
    always = compile_rules([*DEPENDENCY_DIRS, *exclude])
    candidates: list[str] = []
    tracked: set[str] = set()
    listed = _git_files(project_dir)
    if listed is not None:
        selection.git = True
        tracked, untracked = listed
        outputs = compile_rules(list(BUILD_OUTPUTS))
        for rel in sorted(tracked | untracked):
            if always is not None and always.match_file(rel):
                selection.ignored_count += 1
            elif rel not in tracked and outputs is not None and outputs.match_file(rel):
                # Build outputs are left out only when untracked: some projects keep sources in build/.
                selection.ignored_count += 1
            else:
                candidates.append(rel)
        candidates.extend(_walk(project_dir, ".git", IgnoreRules(None), selection, gitignore=False))
    else:
        rules = IgnoreRules(compile_rules([*DEFAULT_EXCLUDES, *exclude, ".git/"]))
        candidates.extend(_walk(project_dir, "", rules, selection, gitignore=True))
    sized: list[LocalFile] = []
    for rel in candidates:
        try:
            st = os.lstat(project_dir / rel)
        except OSError as exc:
            if rel not in tracked:  # a tracked file deleted locally is simply not there
                selection.left_out.append((rel, f"unreadable: {exc.strerror}"))
            continue
        kind = stat.S_IFMT(st.st_mode)
        if kind not in (stat.S_IFREG, stat.S_IFLNK):
            if kind != stat.S_IFDIR:  # git lists a submodule as a path; it has no files of its own here
                selection.left_out.append((rel, _special_reason(st.st_mode)))
            continue
        if kind == stat.S_IFREG and st.st_size > max_file_bytes:
            selection.left_out.append((rel, f"larger than {_size(max_file_bytes)} ({_size(st.st_size)})"))
            continue
        sized.append(LocalFile(rel, st.st_mode, st.st_size))
    total = sum(item.size for item in sized)
    if total > max_total_bytes:
        # Leave out the largest first: many small source files matter more than one big asset.
        keep: set[str] = set()
        budget = max_total_bytes
        for item in sorted(sized, key=lambda f: f.size):
            if item.size <= budget:
                keep.add(item.rel)
                budget -= item.size
            else:
                selection.left_out.append((item.rel, f"over the workspace's total cap of {_size(max_total_bytes)}"))
        sized = [item for item in sized if item.rel in keep]
    selection.files = sorted(sized, key=lambda f: f.rel)
    selection.left_out.sort()
    return selection


def _git_files(project_dir: Path) -> tuple[set[str], set[str]] | None:
    """``(tracked, untracked-not-ignored)`` paths if ``project_dir`` is the top of a git work tree, else None."""
    if not (project_dir / ".git").exists():
        return None

    def ls(*args: str) -> set[str]:
        result = subprocess.run(
            ["git", "-C", str(project_dir), "ls-files", "-z", *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        )
        return {os.fsdecode(item) for item in result.stdout.split(b"\0") if item}

    try:
        return ls("--cached"), ls("--others", "--exclude-standard")
    except (OSError, subprocess.SubprocessError):
        return None  # no git here, or not a work tree git understands: treat as plain files


def _walk(project_dir: Path, start: str, rules: IgnoreRules, selection: Selection, *, gitignore: bool) -> list[str]:
    """Every non-directory path under ``start`` (relative), honouring ``rules`` and, if asked, .gitignore files."""
    found: list[str] = []
    stack = [(start, rules)]
    while stack:
        rel_dir, dir_rules = stack.pop()
        directory = project_dir / rel_dir if rel_dir else project_dir
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            selection.left_out.append((rel_dir or ".", f"unreadable: {exc.strerror}"))
            continue
        if gitignore and any(entry.name == ".gitignore" for entry in entries):
            try:
                text = (directory / ".gitignore").read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = None
            dir_rules = dir_rules.below(rel_dir, text)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if dir_rules.ignored(rel, is_dir):
                selection.ignored_count += 1
                continue
            if is_dir:
                stack.append((rel, dir_rules))
            else:
                found.append(rel)
    return found


def _special_reason(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or other special file"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"
