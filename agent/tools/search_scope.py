"""Which files a search looks at: the project's ignore rules, read through the sandbox.

ripgrep applies ``.gitignore`` files itself; without it the files are listed with
``find`` and filtered here with the same gitignore matcher the workspace upload uses.
Either way a search also leaves out ``.git`` and the dependency and build
directories of ``DEFAULT_EXCLUDES``, unless the search path itself lies inside an
ignored directory: a path the model names explicitly is searched, as in ripgrep.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field

from agent.tools.base import ToolContext, ToolInputError
from protos.workspace_rules import DEFAULT_EXCLUDES, IgnoreRules, compile_rules

SEARCH_OUTPUT_CAP = 64 << 20
"""Bytes of a listing or grep output read back; far past what the model is shown, so nothing is cut silently."""

SEARCH_TIMEOUT_MS = 60_000

VCS_DIRS = (".git", ".hg", ".svn")
"""Version-control metadata, never searched."""

SEARCH_EXCLUDES = (*DEFAULT_EXCLUDES, *(name + "/" for name in VCS_DIRS))
"""The rules in force before any ``.gitignore``: what a workspace leaves out, plus VCS metadata."""

_ROOT_RULES = compile_rules(SEARCH_EXCLUDES)

_EXCLUDED_DIR_NAMES = tuple(p.rstrip("/") for p in SEARCH_EXCLUDES if p.endswith("/"))

# Prints the text of each existing file named in the arguments as "<path>\0<text>\0".
_CAT_FILES = 'for f in "$@"; do [ -f "$f" ] && { printf "%s\\0" "$f"; cat "$f"; printf "\\0"; }; done; true'


async def run_search(ctx: ToolContext, script: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ``script`` under ``/bin/sh`` with ``args`` as $1...; (exit code, stdout, stderr), or a readable error."""
    result = await ctx.lease.exec(
        argv=["/bin/sh", "-c", script, "sh", *args],
        stdin=stdin,
        timeout_ms=SEARCH_TIMEOUT_MS,
        output_cap=SEARCH_OUTPUT_CAP,
    )
    if result.truncated:
        raise ToolInputError(
            f"the search produced more than {SEARCH_OUTPUT_CAP >> 20} MiB of output; narrow `path`, "
            "`glob` or the pattern."
        )
    if result.timed_out:
        raise ToolInputError(
            f"the search took longer than {SEARCH_TIMEOUT_MS // 1000} s; narrow `path`, `glob` or the pattern."
        )
    return result.exit_code, result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")


def _parent(rel: str) -> str:
    return posixpath.dirname(rel)


@dataclass
class SearchScope:
    """One search's base directory and the ignore rules that apply under it."""

    root: str
    """The workspace root: where ignore rules start."""
    base: str
    """The directory searched (absolute)."""
    explicit_ignored: bool = False
    """``base`` lies in an ignored directory: the model named it, so nothing under it is left out but VCS metadata."""
    gitignores: dict[str, str] = field(default_factory=dict)
    """``.gitignore`` text by root-relative directory ("" = the root)."""
    _rules: dict[str, IgnoreRules] = field(default_factory=dict, repr=False)
    _dir_ignored: dict[str, bool] = field(default_factory=dict, repr=False)

    @property
    def base_rel(self) -> str:
        """``base`` relative to the root ("" for the root itself)."""
        return "" if self.base == self.root else self.base[len(self.root.rstrip("/")) + 1 :]

    def rules_at(self, directory: str) -> IgnoreRules:
        """The rules in force inside root-relative ``directory``."""
        rules = self._rules.get(directory)
        if rules is None:
            above = IgnoreRules(_ROOT_RULES) if directory == "" else self.rules_at(_parent(directory))
            rules = self._rules[directory] = above.below(directory, self.gitignores.get(directory))
        return rules

    def dir_ignored(self, directory: str) -> bool:
        """Whether root-relative ``directory``, or one above it, is ignored."""
        if directory == "":
            return False
        verdict = self._dir_ignored.get(directory)
        if verdict is None:
            parent = _parent(directory)
            verdict = self.dir_ignored(parent) or self.rules_at(parent).ignored(directory, True)
            self._dir_ignored[directory] = verdict
        return verdict

    def file_ignored(self, rel: str) -> bool:
        """Whether the file at root-relative ``rel`` is left out of a search of ``base``."""
        directory = _parent(rel)
        if self.explicit_ignored:
            return any(part in VCS_DIRS for part in directory.split("/"))
        return self.dir_ignored(directory) or self.rules_at(directory).ignored(rel, False)

    async def read_gitignores(self, ctx: ToolContext, directories: list[str]) -> None:
        """Read the ``.gitignore`` of each root-relative directory in ``directories`` that has one."""
        wanted = {posixpath.join(self.root, d, ".gitignore"): d for d in directories if d not in self.gitignores}
        if not wanted:
            return
        _, out, _ = await run_search(ctx, _CAT_FILES, *wanted)
        parts = out.split("\0")
        for path, text in zip(parts[0::2], parts[1::2], strict=False):
            if path in wanted:
                self.gitignores[wanted[path]] = text


async def search_scope(ctx: ToolContext, base: str) -> SearchScope:
    """The scope of a search of directory ``base``: reads the ``.gitignore`` files above it to tell whether it is ignored."""
    root = posixpath.normpath(ctx.lease.workdir)
    if base != root and not base.startswith(root.rstrip("/") + "/"):
        root = base  # outside the workspace (the host decides whether that is allowed): rules start at the base
    scope = SearchScope(root=root, base=base)
    rel = scope.base_rel
    if rel:
        parts = rel.split("/")
        above = ["/".join(parts[:i]) for i in range(len(parts))]
        await scope.read_gitignores(ctx, above)
        scope.explicit_ignored = scope.dir_ignored(rel)
    return scope


def _list_files_script(explicit_ignored: bool) -> str:
    # Lists regular files under "$1" as "<mtime> ./<path>" lines, not entering excluded directories.
    names = VCS_DIRS if explicit_ignored else _EXCLUDED_DIR_NAMES
    prune = " -o ".join(f"-name {shlex.quote(name)}" for name in names)
    return f'cd "$1" && find . -type d \\( {prune} \\) -prune -o -type f -print0 | xargs -0 -r stat -c "%Y %n"'


async def list_files(ctx: ToolContext, scope: SearchScope) -> list[tuple[int, str]]:
    """(mtime, path relative to the base) of every file under the scope's base that its ignore rules keep, by find."""
    code, out, err = await run_search(ctx, _list_files_script(scope.explicit_ignored), scope.base)
    if code != 0 and not out:
        raise ToolInputError(f"cannot list {scope.base}: {err.strip() or f'exit code {code}'}")
    files = []
    for line in out.splitlines():
        mtime, _, path = line.partition(" ")
        if path.startswith("./") and mtime.isdigit():
            files.append((int(mtime), path[2:]))
    if scope.explicit_ignored:
        return files
    prefix = scope.base_rel + "/" if scope.base_rel else ""
    # Directories pruned above are gone already; .gitignore files decide the rest, deepest last.
    await scope.read_gitignores(ctx, [_parent(prefix + p) for _, p in files if posixpath.basename(p) == ".gitignore"])
    return [(m, p) for m, p in files if not scope.file_ignored(prefix + p)]
