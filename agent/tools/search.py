"""Glob and Grep: find files and search their contents, with ripgrep when the sandbox has it, find and grep when not.

Both leave out what the project ignores (see ``search_scope``) and answer in the
same shape either way: absolute paths, grep's ``path:line:text`` lines, files in
path order (ripgrep searches in parallel, so its order is not kept).
"""

from __future__ import annotations

import posixpath
import shlex
from typing import Any

from agent.globmatch import compile_glob, file_name_glob
from agent.tools.base import Tool, ToolContext, ToolInputError, ToolResult, cap_for_model, require
from agent.tools.files import sandbox_path
from agent.tools.ripgrep import base_flags, find_ripgrep, ignore_file, parse_rg_output, rg_list_files
from agent.tools.search_scope import SearchScope, list_files, run_search, search_scope
from agent.tools.views import one_line
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

GLOB_MAX_RESULTS = 100
GREP_DEFAULT_HEAD_LIMIT = 250

FILE_TYPES: dict[str, tuple[str, ...]] = {
    "c": ("*.c", "*.h"),
    "cpp": ("*.cpp", "*.cc", "*.cxx", "*.hpp", "*.hh", "*.hxx", "*.h"),
    "css": ("*.css", "*.scss"),
    "go": ("*.go",),
    "html": ("*.html", "*.htm"),
    "java": ("*.java",),
    "js": ("*.js", "*.jsx", "*.mjs", "*.cjs", "*.vue"),
    "json": ("*.json",),
    "kotlin": ("*.kt", "*.kts"),
    "md": ("*.md", "*.markdown", "*.mdx"),
    "py": ("*.py", "*.pyi"),
    "rb": ("*.rb", "Gemfile", "*.gemspec", "Rakefile"),
    "rust": ("*.rs",),
    "sh": ("*.sh", "*.bash", "*.zsh", ".bashrc", ".zshrc", ".profile"),
    "sql": ("*.sql",),
    "swift": ("*.swift",),
    "toml": ("*.toml", "Cargo.lock"),
    "ts": ("*.ts", "*.tsx", "*.cts", "*.mts"),
    "yaml": ("*.yaml", "*.yml"),
}
"""File types for ``type`` when ripgrep is missing: the common ones of ripgrep's own table (``rg --type-list``)."""


def _pattern_relative_to(pattern: str, base: str) -> str:
    if pattern.startswith("/"):
        if pattern.startswith(base.rstrip("/") + "/"):
            return pattern[len(base.rstrip("/")) + 1 :]
        raise ToolInputError(f"pattern {pattern!r} is not under the search path {base}.")
    return pattern


def _relative(path: str, base: str) -> str:
    return path[len(base.rstrip("/")) + 1 :] if path.startswith(base.rstrip("/") + "/") else path


class _SearchTool(Tool):
    """What Glob and Grep share: read-only, asked about as Read of the directory searched."""

    read_only = True
    family = "Read"
    subject = "path"
    subject_is_directory = True

    def summary(self, args: dict[str, Any]) -> str:
        """The pattern, and where it is looked for."""
        where = args.get("path")
        return one_line(
            self.name, str(args.get("pattern", "")) + (f"  in {where}" if isinstance(where, str) and where else "")
        )


class GlobTool(_SearchTool):
    """Finds files by name pattern, newest first."""

    name = "Glob"

    description = (
        'Fast file pattern matching. Supports patterns like "**/*.js" or "src/**/*.{ts,tsx}". '
        f"Returns matching file paths sorted by modification time, newest first (at most {GLOB_MAX_RESULTS})."
    )
    input_schema = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The glob pattern to match files against"},
            "path": {
                "type": "string",
                "description": "The directory to search in; defaults to the current working directory",
            },
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """List the matching files."""
        await ctx.lease.ready()
        base = sandbox_path(ctx, require(args, "path", str, optional=True) or ctx.lease.cwd or ctx.lease.workdir)
        # Stat first, as Grep does: a path outside the workspace is refused the same way, a missing one said plainly.
        info = await ctx.lease.stat(base)
        if not info.exists:
            return ToolResult(f"Path does not exist: {base}", is_error=True)
        if info.kind != pb.FileInfo.DIRECTORY:
            return ToolResult(f"{base} is not a directory; `path` names the directory to search in.", is_error=True)
        pattern = _pattern_relative_to(require(args, "pattern", str), base)
        regex = compile_glob(pattern)
        scope = await search_scope(ctx, base)
        rg = await find_ripgrep(ctx)
        if rg:
            files = await rg_list_files(ctx, rg, scope, file_name_glob(pattern))
        else:
            files = await list_files(ctx, scope)
        matches = sorted(((m, p) for m, p in files if regex.match(p)), key=lambda mp: (-mp[0], mp[1]))
        if not matches:
            return ToolResult("No files found")
        lines = [posixpath.join(base, p) for _, p in matches[:GLOB_MAX_RESULTS]]
        if len(matches) > GLOB_MAX_RESULTS:
            lines.append(f"(Results are truncated: {len(matches)} files matched. Use a more specific path or pattern.)")
        return ToolResult("\n".join(lines))


class GrepTool(_SearchTool):
    """Searches file contents with regular expressions."""

    name = "Grep"

    description = (
        "Searches file contents for a regular expression (ripgrep syntax, or POSIX extended where the sandbox lacks "
        "ripgrep; \\d, \\w, \\s and \\b work in both). Files the project ignores (.gitignore, node_modules, build "
        "output) are skipped unless `path` names them. Filter files with "
        '`glob` (e.g. "*.py", "src/**/*.ts") or `type` (e.g. "py", "js"). `output_mode`: "files_with_matches" (default), '
        '"content" (matching lines; -n, -A, -B, -C apply) or "count". `head_limit` caps the output.'
    )
    input_schema = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The regular expression to search for"},
            "path": {
                "type": "string",
                "description": "File or directory to search in; defaults to the working directory",
            },
            "glob": {"type": "string", "description": 'Glob pattern to filter files (e.g. "*.js")'},
            "type": {
                "type": "string",
                "description": 'File type to search (e.g. "py", "js", "rust"), as ripgrep names them',
            },
            "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
            "-i": {"type": "boolean", "description": "Case insensitive search"},
            "-n": {"type": "boolean", "description": "Show line numbers (content mode; default true)"},
            "-A": {"type": "number", "description": "Lines to show after each match (content mode)"},
            "-B": {"type": "number", "description": "Lines to show before each match (content mode)"},
            "-C": {"type": "number", "description": "Lines to show around each match (content mode)"},
            "multiline": {
                "type": "boolean",
                "description": "Let the pattern span lines (. matches newlines); needs ripgrep in the sandbox",
            },
            "head_limit": {"type": "number", "description": "Show only the first N lines or entries"},
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Search the chosen files and shape the output as grep's."""
        pattern = require(args, "pattern", str)
        mode = require(args, "output_mode", str, optional=True) or "files_with_matches"
        if mode not in ("content", "files_with_matches", "count"):
            raise ToolInputError('`output_mode` must be "content", "files_with_matches" or "count".')
        head_limit = _count(args, "head_limit") or GREP_DEFAULT_HEAD_LIMIT
        context = {key: _count(args, key) for key in ("-A", "-B", "-C")} if mode == "content" else {}
        line_numbers = bool(args.get("-n", True))
        glob = require(args, "glob", str, optional=True)
        file_type = require(args, "type", str, optional=True)
        multiline = bool(require(args, "multiline", bool, optional=True))
        await ctx.lease.ready()
        base = sandbox_path(ctx, require(args, "path", str, optional=True) or ctx.lease.cwd or ctx.lease.workdir)
        info = await ctx.lease.stat(base)
        if not info.exists:
            return ToolResult(f"Path does not exist: {base}", is_error=True)
        is_dir = info.kind == pb.FileInfo.DIRECTORY
        glob_rel = _pattern_relative_to(glob, base) if glob and is_dir else None
        # A file named explicitly is searched whatever the ignore rules say, and whatever its name.
        scope = (
            await search_scope(ctx, base)
            if is_dir
            else SearchScope(root=posixpath.dirname(base), base=base, explicit_ignored=True)
        )

        rg = await find_ripgrep(ctx)
        if rg:
            lines = await _rg_search(
                ctx,
                rg,
                scope,
                pattern,
                mode,
                args,
                context,
                line_numbers,
                glob_rel,
                file_type if is_dir else None,
                multiline,
            )
        else:
            if multiline:
                raise ToolInputError(
                    "`multiline` needs ripgrep, and this sandbox has none; search line by line, or use Bash."
                )
            lines = await _grep_search(
                ctx, scope, is_dir, pattern, mode, args, context, line_numbers, glob_rel, file_type
            )
        if isinstance(lines, ToolResult):
            return lines
        if not lines:
            return ToolResult("No matches found" if mode != "files_with_matches" else "No files found")
        shown = lines[:head_limit]
        text = "\n".join(shown)
        if len(lines) > head_limit:
            text += f"\n\n[{len(lines) - head_limit} more lines; raise head_limit or narrow the search]"
        if mode == "files_with_matches":
            text = f"Found {min(len(lines), head_limit)} file{'s' if len(lines) != 1 else ''}\n" + text
        text, _ = cap_for_model(text)
        return ToolResult(text)


async def _rg_search(
    ctx: ToolContext,
    rg: str,
    scope: SearchScope,
    pattern: str,
    mode: str,
    args: dict[str, Any],
    context: dict[str, int | None],
    line_numbers: bool,
    glob_rel: str | None,
    file_type: str | None,
    multiline: bool,
) -> list[str] | ToolResult:
    """Grep's output lines from one ripgrep run, files in path order."""
    name_glob = file_name_glob(glob_rel) if glob_rel and not file_type else None
    argv = [*base_flags(rg, scope, name_glob, file_type), "--with-filename", "--no-messages"]
    if args.get("-i"):
        argv.append("--ignore-case")
    if multiline:
        argv += ["--multiline", "--multiline-dotall"]
    if mode == "files_with_matches":
        argv.append("--files-with-matches")
    elif mode == "count":
        argv.append("--count")
    else:
        # Always numbered, so a match line (n:) is told from a context line (n-); the number is dropped after if unwanted.
        argv.append("--line-number")
        for key, value in context.items():
            if value:
                argv += [key, str(value)]
    argv += ["--regexp", pattern, "--", scope.base]
    code, out, err = await run_search(ctx, 'cd "$1" && shift && exec "$@"', scope.root, *argv, stdin=ignore_file(scope))
    # ripgrep exits 1 for "no match" and 2 for an error, also when some unreadable file was skipped.
    if code >= 2 and not out:
        return ToolResult(f"ripgrep failed: {err.strip() or f'exit code {code}'}", is_error=True)
    by_file = parse_rg_output(out, mode, line_numbers)
    if glob_rel:
        regex = compile_glob(glob_rel)
        by_file = {path: lines for path, lines in by_file.items() if regex.match(_relative(path, scope.base))}
    joined: list[str] = []
    for path in sorted(by_file):
        if joined and any(context.values()):
            joined.append("--")
        joined += [line.text for line in by_file[path]]
    return joined


async def _grep_search(
    ctx: ToolContext,
    scope: SearchScope,
    is_dir: bool,
    pattern: str,
    mode: str,
    args: dict[str, Any],
    context: dict[str, int | None],
    line_numbers: bool,
    glob_rel: str | None,
    file_type: str | None,
) -> list[str] | ToolResult:
    """Grep's output lines from find and grep, for a sandbox without ripgrep."""
    ere = posix_ere(pattern)
    flags = ["-E", "-s"]
    if args.get("-i"):
        flags.append("-i")
    if mode == "files_with_matches":
        flags.append("-l")
    elif mode == "count":
        flags.append("-c")
    else:
        if line_numbers:
            flags.append("-n")
        for key, value in context.items():
            if value:
                flags += [key, str(value)]
    if not is_dir:
        script = f'grep -H {shlex.join(flags)} -e "$1" -- "$2"'
        code, out, err = await run_search(ctx, script, ere, scope.base)
        prefix = ""
    else:
        files = await list_files(ctx, scope)
        if glob_rel:
            regex = compile_glob(glob_rel)
            files = [(m, p) for m, p in files if regex.match(p)]
        if file_type:
            if file_type not in FILE_TYPES:
                raise ToolInputError(
                    f"unknown `type` {file_type!r} in this sandbox (no ripgrep); known: {', '.join(FILE_TYPES)}. "
                    "Use `glob` instead."
                )
            names = [compile_glob(g) for g in FILE_TYPES[file_type]]
            files = [(m, p) for m, p in files if any(n.match(p) for n in names)]
        if not files:
            return []
        names_in = b"".join(p.encode() + b"\0" for _, p in sorted(files, key=lambda mp: mp[1]))
        script = f'cd "$2" && xargs -0 -r grep -H {shlex.join(flags)} -e "$1" --'
        code, out, err = await run_search(ctx, script, ere, scope.base, stdin=names_in)
        prefix = scope.base.rstrip("/") + "/"
    # grep exits 1 for "no match"; through xargs that becomes 123, so only stderr tells a real failure.
    if code >= 2 and not out and (code != 123 or err.strip()):
        return ToolResult(f"grep failed: {err.strip() or f'exit code {code}'}", is_error=True)
    lines = [prefix + line if prefix and line and line != "--" else line for line in out.splitlines()]
    if mode == "count":
        lines = [line for line in lines if not line.endswith(":0")]
    return lines


def posix_ere(pattern: str) -> str:
    """``pattern`` with the Perl digit classes models write (``\\d``, ``\\D``) spelled in POSIX ERE.

    grep -E (GNU and busybox) knows ``\\w``, ``\\s`` and ``\\b`` but reads ``\\d`` as a plain ``d``.
    """
    out: list[str] = []
    i, n, in_bracket = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            pair = pattern[i : i + 2]
            if pair == "\\d":
                out.append("0-9" if in_bracket else "[0-9]")
            elif pair == "\\D" and not in_bracket:
                out.append("[^0-9]")
            else:
                out.append(pair)
            i += 2
            continue
        if c == "[" and not in_bracket:
            in_bracket = True
            out.append(c)
            i += 1
            # A ] right after [ or [^ is a literal member, not the end.
            if pattern[i : i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i : i + 1] == "]":
                out.append("]")
                i += 1
            continue
        if c == "]" and in_bracket:
            in_bracket = False
        out.append(c)
        i += 1
    return "".join(out)


def _count(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or int(value) != value:
        raise ToolInputError(f"`{key}` must be a whole number ≥ 0.")
    return int(value)
