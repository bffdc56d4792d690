"""ripgrep in the sandbox: found once per sandbox, run with the project's ignore rules, its output read back.

Output is read with ``--null`` (a NUL after each path), so a path holding ``:``
or ``-`` is never mistaken for a line number, and put back in grep's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.tools.base import ToolContext, ToolInputError
from agent.tools.search_scope import SEARCH_EXCLUDES, SearchScope, run_search

# The first rg on PATH that knows --no-require-git (ripgrep 11+), or nothing.
_FIND_RG = 'rg=$(command -v rg) && "$rg" --no-require-git --version >/dev/null 2>&1 && printf %s "$rg"; true'

_TYPE_NAME = "tetherglob"
"""The ripgrep file type a Glob or Grep ``glob`` becomes (see ``base_flags``)."""


async def find_ripgrep(ctx: ToolContext) -> str:
    """The path of ripgrep in the lease's sandbox, "" when it has none; looked for once per sandbox."""
    path = ctx.lease.program("rg")
    if path is None:
        _, out, _ = await run_search(ctx, _FIND_RG)
        path = out.strip()
        ctx.lease.remember_program("rg", path)
    return path


def base_flags(rg: str, scope: SearchScope, name_glob: str | None, file_type: str | None) -> list[str]:
    """The argv of ``rg`` (before mode flags and paths) for a search of ``scope``.

    Hidden files are searched, as find does; ``.git`` never. The workspace's default
    excludes come on stdin as an ignore file, which ranks below ``.gitignore`` files,
    so a project's ``!dist/`` still brings its ``dist`` back. A file-name glob becomes a
    file type, not ``--glob``: ripgrep lets a ``--glob`` match override ``.gitignore``,
    and an ignored ``*.log`` must stay ignored when the model asks for ``*.log``.
    """
    argv = [rg, "--no-config", "--hidden", "--no-require-git", "--null", "--color=never", "--glob=!.git"]
    argv += ["--no-ignore"] if scope.explicit_ignored else ["--ignore-file=/dev/stdin"]
    if name_glob:
        argv += [f"--type-add={_TYPE_NAME}:{name_glob}", f"--type={_TYPE_NAME}"]
    if file_type:
        argv += [f"--type={file_type}"]
    return argv


def ignore_file(scope: SearchScope) -> bytes:
    """What ``--ignore-file=/dev/stdin`` reads: the default excludes."""
    return b"" if scope.explicit_ignored else "".join(p + "\n" for p in SEARCH_EXCLUDES).encode()


async def rg_list_files(ctx: ToolContext, rg: str, scope: SearchScope, name_glob: str | None) -> list[tuple[int, str]]:
    """(mtime, path relative to the base) of every file ``rg --files`` keeps under the scope's base."""
    argv = [*base_flags(rg, scope, name_glob, None), "--files", "--", scope.base]
    script = 'cd "$1" && shift && "$@" | xargs -0 -r stat -c "%Y %n"'
    code, out, err = await run_search(ctx, script, scope.root, *argv, stdin=ignore_file(scope))
    if code != 0 and not out:
        raise ToolInputError(f"cannot list {scope.base}: {err.strip() or f'exit code {code}'}")
    prefix = scope.base.rstrip("/") + "/"
    files = []
    for line in out.splitlines():
        mtime, _, path = line.partition(" ")
        if mtime.isdigit() and path.startswith(prefix):
            files.append((int(mtime), path[len(prefix) :]))
    return files


@dataclass
class GrepLine:
    """One line of ripgrep's output, as grep would print it."""

    path: str
    """"" for a ``--`` separator between context groups."""
    text: str


def parse_rg_output(out: str, mode: str, line_numbers: bool) -> dict[str, list[GrepLine]]:
    """ripgrep's ``--null`` output (run with ``--line-number`` in content mode) as grep lines, by file, in rg's order."""
    by_file: dict[str, list[GrepLine]] = {}
    if mode == "files_with_matches":
        for path in out.split("\0"):
            if path:
                by_file.setdefault(path, []).append(GrepLine(path, path))
        return by_file
    pending_separator, last = False, ""
    for raw in out.split("\n"):
        if raw == "--":
            pending_separator = True
            continue
        path, nul, rest = raw.partition("\0")
        if not nul:
            continue
        lines = by_file.setdefault(path, [])
        if mode == "count":
            lines.append(GrepLine(path, f"{path}:{rest}"))
            continue
        # Separators between files come back when the files are joined; only those inside a file are kept here.
        if pending_separator and path == last and lines:
            lines.append(GrepLine("", "--"))
        pending_separator, last = False, path
        number, sep, text = _split_number(rest)
        lines.append(GrepLine(path, f"{path}{sep}{number}{sep}{text}" if line_numbers else f"{path}{sep}{text}"))
    return by_file


def _split_number(rest: str) -> tuple[str, str, str]:
    """``"12:text"`` → ("12", ":", "text"); ``"12-text"`` (a context line) → ("12", "-", "text")."""
    i = 0
    while i < len(rest) and rest[i].isdigit():
        i += 1
    return rest[:i], rest[i : i + 1] or ":", rest[i + 1 :]
