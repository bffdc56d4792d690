"""Glob and Grep: find files and search their contents with nothing but a POSIX shell and busybox."""

from __future__ import annotations

import posixpath
import shlex
from typing import Any

from agent.globmatch import compile_glob
from agent.tools.base import Tool, ToolContext, ToolInputError, ToolResult, cap_for_model, require
from agent.tools.files import sandbox_path
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

GLOB_MAX_RESULTS = 100
GREP_DEFAULT_HEAD_LIMIT = 250
# Lists regular files under "$1" as "<mtime> ./<path>" lines, skipping VCS metadata.
_LIST_FILES = (
    'cd "$1" && find . \\( -name .git -o -name .hg -o -name .svn \\) -prune -o -type f -print0 '
    '| xargs -0 -r stat -c "%Y %n"'
)


SEARCH_OUTPUT_CAP = 64 << 20
"""Bytes of a listing or grep output read back; far past what the model is shown, so nothing is cut silently."""


async def _run(ctx: ToolContext, script: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    result = await ctx.lease.client.exec(
        ctx.lease.sandbox_id,
        argv=["/bin/sh", "-c", script, "sh", *args],
        stdin=stdin,
        timeout_ms=60_000,
        output_cap=SEARCH_OUTPUT_CAP,
    )
    if result.truncated:
        raise ToolInputError(
            f"the search produced more than {SEARCH_OUTPUT_CAP >> 20} MiB of output; narrow `path`, "
            "`glob` or the pattern."
        )
    if result.timed_out:
        raise ToolInputError("the search took longer than 60 s; narrow `path`, `glob` or the pattern.")
    return result.exit_code, result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")


async def list_files(ctx: ToolContext, base: str) -> list[tuple[int, str]]:
    """(mtime, relative path) of every regular file under ``base``."""
    code, out, err = await _run(ctx, _LIST_FILES, base)
    if code != 0 and not out:
        raise ToolInputError(f"cannot list {base}: {err.strip() or f'exit code {code}'}")
    files = []
    for line in out.splitlines():
        mtime, _, path = line.partition(" ")
        if path.startswith("./") and mtime.isdigit():
            files.append((int(mtime), path[2:]))
    return files


def _pattern_relative_to(pattern: str, base: str) -> str:
    if pattern.startswith("/"):
        if pattern.startswith(base.rstrip("/") + "/"):
            return pattern[len(base.rstrip("/")) + 1 :]
        raise ToolInputError(f"pattern {pattern!r} is not under the search path {base}.")
    return pattern


class GlobTool(Tool):
    """Finds files by name pattern, newest first."""

    name = "Glob"
    read_only = True
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
        info = await ctx.lease.client.stat(ctx.lease.sandbox_id, base)
        if not info.exists:
            return ToolResult(f"Path does not exist: {base}", is_error=True)
        if info.kind != pb.FileInfo.DIRECTORY:
            return ToolResult(f"{base} is not a directory; `path` names the directory to search in.", is_error=True)
        pattern = _pattern_relative_to(require(args, "pattern", str), base)
        regex = compile_glob(pattern)
        matches = sorted(((m, p) for m, p in await list_files(ctx, base) if regex.match(p)), key=lambda mp: (-mp[0], mp[1]))
        if not matches:
            return ToolResult("No files found")
        lines = [posixpath.join(base, p) for _, p in matches[:GLOB_MAX_RESULTS]]
        if len(matches) > GLOB_MAX_RESULTS:
            lines.append(f"(Results are truncated: {len(matches)} files matched. Use a more specific path or pattern.)")
        return ToolResult("\n".join(lines))


class GrepTool(Tool):
    """Searches file contents with extended regular expressions."""

    name = "Grep"
    read_only = True
    description = (
        "Searches file contents for a regular expression (POSIX extended syntax; \\d, \\w, \\s and \\b work too). Filter files with "
        '`glob` (e.g. "*.py", "src/**/*.ts"). `output_mode`: "files_with_matches" (default), '
        '"content" (matching lines; -n, -A, -B, -C apply) or "count". `head_limit` caps the output.'
    )
    input_schema = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The regular expression to search for"},
            "path": {"type": "string", "description": "File or directory to search in; defaults to the working directory"},
            "glob": {"type": "string", "description": 'Glob pattern to filter files (e.g. "*.js")'},
            "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
            "-i": {"type": "boolean", "description": "Case insensitive search"},
            "-n": {"type": "boolean", "description": "Show line numbers (content mode; default true)"},
            "-A": {"type": "number", "description": "Lines to show after each match (content mode)"},
            "-B": {"type": "number", "description": "Lines to show before each match (content mode)"},
            "-C": {"type": "number", "description": "Lines to show around each match (content mode)"},
            "head_limit": {"type": "number", "description": "Show only the first N lines or entries"},
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Run grep over the chosen files and shape its output."""
        pattern = require(args, "pattern", str)
        mode = require(args, "output_mode", str, optional=True) or "files_with_matches"
        if mode not in ("content", "files_with_matches", "count"):
            raise ToolInputError('`output_mode` must be "content", "files_with_matches" or "count".')
        head_limit = _count(args, "head_limit") or GREP_DEFAULT_HEAD_LIMIT
        await ctx.lease.ready()
        base = sandbox_path(ctx, require(args, "path", str, optional=True) or ctx.lease.cwd or ctx.lease.workdir)
        info = await ctx.lease.client.stat(ctx.lease.sandbox_id, base)
        if not info.exists:
            return ToolResult(f"Path does not exist: {base}", is_error=True)

        ere = posix_ere(pattern)
        flags = ["-E", "-s"]
        if args.get("-i"):
            flags.append("-i")
        if mode == "files_with_matches":
            flags.append("-l")
        elif mode == "count":
            flags.append("-c")
        else:
            if args.get("-n", True):
                flags.append("-n")
            for key in ("-A", "-B", "-C"):
                value = _count(args, key)
                if value:
                    flags += [key, str(value)]

        if info.kind != pb.FileInfo.DIRECTORY:
            script = f"grep -H {shlex.join(flags)} -e \"$1\" -- \"$2\""
            code, out, err = await _run(ctx, script, ere, base)
            prefix = ""
        else:
            glob = require(args, "glob", str, optional=True)
            files = await list_files(ctx, base)
            if glob:
                regex = compile_glob(_pattern_relative_to(glob, base))
                files = [(m, p) for m, p in files if regex.match(p)]
            if not files:
                return ToolResult("No files found" if mode != "count" else "No matches found")
            names = b"".join(p.encode() + b"\0" for _, p in sorted(files, key=lambda mp: mp[1]))
            script = f'cd "$2" && xargs -0 -r grep -H {shlex.join(flags)} -e "$1" --'
            code, out, err = await _run(ctx, script, ere, base, stdin=names)
            prefix = base.rstrip("/") + "/"
        # grep exits 1 for "no match"; through xargs that becomes 123, so only stderr tells a real failure.
        if code >= 2 and not out and (code != 123 or err.strip()):
            return ToolResult(f"grep failed: {err.strip() or f'exit code {code}'}", is_error=True)
        lines = [prefix + line if prefix and line and line != "--" else line for line in out.splitlines()]
        if mode == "count":
            lines = [line for line in lines if not line.endswith(":0")]
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
