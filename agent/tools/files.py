"""Read, Write and Edit: file tools with the semantics models already know."""

from __future__ import annotations

import posixpath
from typing import Any

from agent.lease import SandboxLease
from agent.sandbox_client import SandboxError, SandboxInvalidRequest
from agent.tools.base import Tool, ToolContext, ToolInputError, ToolResult, require
from agent.tools.views import CallView, ResultView, text_diff
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

READ_DEFAULT_LINES = 2000
READ_MAX_LINE_CHARS = 2000
READ_MAX_BYTES = 16 << 20
"""Bytes fetched for one Read; enough for any text file worth showing a model."""
WRITE_DIFF_MAX_BYTES = 1 << 20
"""A Write over a file up to this size is shown as a diff against it; a larger one as its new content."""


def sandbox_path(ctx: ToolContext, raw: str) -> str:
    """An absolute, normalised sandbox path; relative paths are taken from the shell's cwd."""
    if not raw:
        raise ToolInputError("`file_path` is empty.")
    base = ctx.lease.cwd or ctx.lease.workdir
    return posixpath.normpath(raw if raw.startswith("/") else posixpath.join(base, raw))


async def _stat(ctx: ToolContext, path: str) -> pb.FileInfo:
    return await ctx.lease.stat(path)


class ReadTool(Tool):
    """Reads a text file with ``cat -n`` style line numbers."""

    name = "Read"
    read_only = True
    subject = "file_path"
    description = (
        "Reads a file from the sandbox. Returns lines numbered like `cat -n`, "
        f"{READ_DEFAULT_LINES} lines from the start by default; use `offset` (1-based line) "
        f"and `limit` for more. Lines longer than {READ_MAX_LINE_CHARS} characters are cut. "
        "Directories and binary files are described rather than dumped."
    )
    input_schema = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": "The absolute path to the file to read"},
            "offset": {"type": "number", "description": "The line number to start reading from"},
            "limit": {"type": "number", "description": "The number of lines to read"},
        },
        "required": ["file_path"],
        "additionalProperties": False,
    }

    def result_view(self, args: dict[str, Any], result: ToolResult) -> ResultView:
        """The lines read, folded: the user rarely wants to read them again."""
        return ResultView("text", result.content, collapsed=not result.is_error)

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Number and return the requested lines."""
        path = sandbox_path(ctx, require(args, "file_path", str))
        offset = _positive_int(args, "offset", 1)
        limit = _positive_int(args, "limit", READ_DEFAULT_LINES)
        await ctx.lease.ready()
        info = await _stat(ctx, path)
        if not info.exists:
            return ToolResult(f"File does not exist: {path}", is_error=True)
        if info.kind == pb.FileInfo.DIRECTORY:
            return ToolResult(f"{path} is a directory, not a file. Use Bash `ls` to list it.", is_error=True)
        data = await ctx.lease.read_file(path, length=READ_MAX_BYTES)
        ctx.read_paths.add(path)
        if b"\0" in data[:8192]:
            return ToolResult(
                f"{path} is a binary file ({info.size:,} bytes); it cannot be shown as text. "
                "Use Bash (e.g. `od -c | head`) to inspect it.",
                is_error=True,
            )
        if not data:
            return ToolResult(f"<system-reminder>{path} exists but is empty.</system-reminder>")
        # Only \n ends a line, as for cat -n and grep -n (str.splitlines also splits at \f, \v, \x1c...).
        lines = data.decode("utf-8", "replace").split("\n")
        if lines[-1] == "":
            lines.pop()
        if offset > len(lines):
            return ToolResult(f"{path} has {len(lines)} lines; offset {offset} is past the end.", is_error=True)
        chosen = lines[offset - 1 : offset - 1 + limit]
        width = max(6, len(str(offset + len(chosen))))
        out = []
        for number, line in enumerate(chosen, start=offset):
            if len(line) > READ_MAX_LINE_CHARS:
                line = line[:READ_MAX_LINE_CHARS] + "… [line cut]"
            out.append(f"{number:>{width}}\t{line}")
        text = "\n".join(out)
        rest = len(lines) - (offset - 1 + len(chosen))
        if rest > 0:
            text += f"\n\n[{rest} more lines; read on with offset={offset + len(chosen)}]"
        if len(data) >= READ_MAX_BYTES and info.size > READ_MAX_BYTES:
            text += f"\n[only the first {READ_MAX_BYTES:,} of {info.size:,} bytes were read]"
        return ToolResult(text)


class WriteTool(Tool):
    """Writes a whole file, atomically; refuses to clobber a file the model has not read."""

    name = "Write"
    changes_files = True
    family = "Edit"
    subject = "file_path"
    description = (
        "Writes a file in the sandbox, replacing it if it exists. An existing file must "
        "have been Read in this session first. Parent directories are created."
    )
    input_schema = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": "The absolute path to the file to write"},
            "content": {"type": "string", "description": "The content to write to the file"},
        },
        "required": ["file_path", "content"],
        "additionalProperties": False,
    }

    def call_view(self, args: dict[str, Any]) -> CallView:
        """The new content, as a diff that adds every line."""
        path = str(args.get("file_path", ""))
        content = args.get("content")
        return CallView(
            "diff", self.summary(args), text=text_diff(path, "", content if isinstance(content, str) else ""), path=path
        )

    async def call_view_in(self, lease: SandboxLease, args: dict[str, Any]) -> CallView:
        """The change as a diff against the file as it is in the sandbox now (all added for a new file)."""
        path, content = args.get("file_path"), args.get("content")
        if lease.info is None or not isinstance(path, str) or not path.startswith("/") or not isinstance(content, str):
            return self.call_view(args)
        try:
            info = await lease.stat(path)
            if not info.exists or info.kind != pb.FileInfo.FILE or info.size > WRITE_DIFF_MAX_BYTES:
                return self.call_view(args)
            data = await lease.read_file(path)
            if b"\0" in data[:8192]:
                return self.call_view(args)  # binary, as Read judges it
            old = data.decode("utf-8")
        except (SandboxError, UnicodeDecodeError):
            # Nothing to compare with that a person could read (gone, binary): the new content, as added lines.
            return self.call_view(args)
        diff = text_diff(path, old, content)
        return CallView(
            "diff", self.summary(args), text=diff or "(no change: the file already has this content)\n", path=path
        )

    def result_view(self, args: dict[str, Any], result: ToolResult) -> ResultView:
        """Only what went wrong: the diff shows what was written."""
        return ResultView("text" if result.is_error else "none", result.content, collapsed=not result.is_error)

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Write the content, after the read-before-overwrite check."""
        path = sandbox_path(ctx, require(args, "file_path", str))
        content = require(args, "content", str)
        await ctx.lease.ready()
        try:
            info = await _stat(ctx, path)
        except SandboxInvalidRequest:
            # The host refuses to stat below a missing directory. Nothing is there to
            # clobber then; the write itself (which creates parents) reports any real problem.
            info = pb.FileInfo(path=path, exists=False)
        if info.exists and info.kind == pb.FileInfo.DIRECTORY:
            return ToolResult(f"{path} is a directory; cannot write a file there.", is_error=True)
        if info.exists and path not in ctx.read_paths:
            return ToolResult(
                f"{path} already exists and has not been Read in this session. Read it first, "
                "then Write (or use Edit to change part of it).",
                is_error=True,
            )
        # Replacing a file keeps its mode (an executable script stays executable).
        mode = info.mode & 0o7777 if info.exists and info.mode & 0o7777 else 0o644
        await ctx.lease.write_file(path, content.encode("utf-8"), mode=mode)
        ctx.read_paths.add(path)
        verb = "updated" if info.exists else "created"
        return ToolResult(f"File {verb} successfully at: {path}")


class EditTool(Tool):
    """Replaces an exact string in a file: once and uniquely, or everywhere with ``replace_all``."""

    name = "Edit"
    changes_files = True
    family = "Edit"
    subject = "file_path"
    description = (
        "Performs an exact string replacement in a file. `old_string` must occur exactly once "
        "unless `replace_all` is true. The file must have been Read in this session first."
    )
    input_schema = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": "The absolute path to the file to modify"},
            "old_string": {"type": "string", "description": "The text to replace"},
            "new_string": {"type": "string", "description": "The text to replace it with"},
            "replace_all": {
                "type": "boolean",
                "description": "Replace all occurrences of old_string (default false)",
                "default": False,
            },
        },
        "required": ["file_path", "old_string", "new_string"],
        "additionalProperties": False,
    }

    def call_view(self, args: dict[str, Any]) -> CallView:
        """The replacement, as a diff of the old string to the new one."""
        path = str(args.get("file_path", ""))
        old, new = args.get("old_string"), args.get("new_string")
        diff = text_diff(path, old if isinstance(old, str) else "", new if isinstance(new, str) else "")
        return CallView("diff", self.summary(args), text=diff, path=path)

    def result_view(self, args: dict[str, Any], result: ToolResult) -> ResultView:
        """Only what went wrong: the diff shows the change."""
        return ResultView("text" if result.is_error else "none", result.content, collapsed=not result.is_error)

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Apply the replacement, or say precisely why not."""
        path = sandbox_path(ctx, require(args, "file_path", str))
        old = require(args, "old_string", str)
        new = require(args, "new_string", str)
        replace_all = bool(require(args, "replace_all", bool, optional=True))
        if old == new:
            return ToolResult("`old_string` and `new_string` are the same; there is nothing to change.", is_error=True)
        if not old:
            return ToolResult("`old_string` is empty; use Write to create a file.", is_error=True)
        await ctx.lease.ready()
        info = await _stat(ctx, path)
        if not info.exists:
            return ToolResult(f"File does not exist: {path}", is_error=True)
        if path not in ctx.read_paths:
            return ToolResult(f"{path} has not been Read in this session. Read it first, then Edit.", is_error=True)
        # Replace bytes, not decoded text: bytes that are not UTF-8 elsewhere in the file stay as they were.
        data = await ctx.lease.read_file(path)
        old_bytes, new_bytes = old.encode("utf-8"), new.encode("utf-8")
        count = data.count(old_bytes)
        if count == 0:
            return ToolResult(
                f"`old_string` was not found in {path}. It must match exactly, whitespace included.", is_error=True
            )
        if count > 1 and not replace_all:
            return ToolResult(
                f"`old_string` occurs {count} times in {path}. Give more surrounding context to make "
                "it unique, or set `replace_all` to true.",
                is_error=True,
            )
        updated = data.replace(old_bytes, new_bytes) if replace_all else data.replace(old_bytes, new_bytes, 1)
        await ctx.lease.write_file(path, updated, mode=info.mode & 0o7777 or 0o644)
        times = f"{count} occurrences" if replace_all else "1 occurrence"
        return ToolResult(f"The file {path} has been updated ({times} replaced).")


def _positive_int(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ToolInputError(f"`{key}` must be a positive whole number.")
    return int(value)
