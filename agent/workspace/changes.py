"""The way back: ``diff`` and ``apply`` against the project, ``rewind`` to an earlier prompt.

All three read the session store alone (checkpoint states and their blobs), so
``tether diff`` and ``tether apply`` work days later with no sandbox running.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.workspace.checkpoints import is_utf8
from agent.workspace.upload import normal_mode, read_local
from session.blobs import BlobNotFound
from session.checkpoints import (
    CheckpointChanges,
    FileState,
    WorkspaceState,
    checkpoints_on_path,
    decode_path,
    diff_states,
    encode_path,
    record_checkpoint,
    state_at,
)
from session.events import Event
from session.log import SessionLog

BINARY_PROBE = 8000
"""Bytes looked at to tell a binary file (a NUL in them), as git does."""


class WorkspaceChangeError(Exception):
    """A diff, apply or rewind cannot be done; the message says why."""


def base_state(log: SessionLog) -> tuple[WorkspaceState, int]:
    """What ``diff`` compares against: the upload (copy) or first checkpoint (direct), moved on by every apply.

    Returns the state and the newest checkpoint's sequence number.
    """
    events = checkpoints_on_path(log)
    if not events:
        raise WorkspaceChangeError("this session has no checkpoints yet: no tool has changed the workspace")
    base, _ = state_at(log, events[0].uuid)
    for event in events[1:]:
        for text, value in (event.payload.get("applied") or {}).items():
            path = decode_path(text)
            if value is None:
                base.pop(path, None)
            else:
                base[path] = FileState(*value)
    return base, int(events[-1].payload.get("seq", 0))


def current_state(log: SessionLog) -> WorkspaceState:
    """The workspace as of the newest checkpoint on the live branch."""
    state, _ = state_at(log)
    return state


def unified_diff(log: SessionLog, old: WorkspaceState, new: WorkspaceState) -> str:
    """A git-style unified diff from ``old`` to ``new`` (binary files named, not dumped)."""
    changes = diff_states(old, new)
    paths = sorted(set(changes.set) | set(changes.removed))
    return "".join(_file_diff(log, path, old.get(path), new.get(path)) for path in paths)


def _file_diff(log: SessionLog, path: str, before: FileState | None, after: FileState | None) -> str:
    shown = path.encode("utf-8", "backslashreplace").decode("utf-8") if not is_utf8(path) else path
    lines = [f"diff --git a/{shown} b/{shown}\n"]
    if before is None and after is not None:
        lines.append(f"new file mode {after.mode:06o}\n")
    elif after is None and before is not None:
        lines.append(f"deleted file mode {before.mode:06o}\n")
    elif before is not None and after is not None and before.mode != after.mode:
        lines.append(f"old mode {before.mode:06o}\nnew mode {after.mode:06o}\n")
    if before is not None and after is not None and before.sha256 == after.sha256:
        return "".join(lines)
    old_data = _blob(log, before)
    new_data = _blob(log, after)
    old_name = f"a/{shown}" if before is not None else "/dev/null"
    new_name = f"b/{shown}" if after is not None else "/dev/null"
    if old_data is None or new_data is None:
        lines.append(f"(content of {shown} is missing from the session store)\n")
        return "".join(lines)
    if _binary(old_data) or _binary(new_data):
        lines.append(f"Binary files {old_name} and {new_name} differ\n")
        return "".join(lines)
    old_lines = old_data.decode("utf-8").splitlines(keepends=True)
    new_lines = new_data.decode("utf-8").splitlines(keepends=True)
    lines.append(f"--- {old_name}\n+++ {new_name}\n")
    for line in list(difflib.unified_diff(old_lines, new_lines, n=3))[2:]:
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def _blob(log: SessionLog, state: FileState | None) -> bytes | None:
    if state is None:
        return b""
    try:
        return log.get_blob(state.sha256)
    except BlobNotFound:
        return None


def _binary(data: bytes) -> bool:
    if b"\0" in data[:BINARY_PROBE]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# ----------------------------------------------------------------------------- apply


@dataclass
class ApplyReport:
    """What an apply wrote, and what it refused."""

    written: list[str] = field(default_factory=list)
    """Files added or changed in the project."""
    deleted: list[str] = field(default_factory=list)
    """Files removed from the project."""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """``(path, why)`` for changes not applied."""

    def summary(self) -> str:
        """A few lines for the user."""
        parts = [f"{len(self.written)} written, {len(self.deleted)} deleted, {len(self.refused)} refused"]
        parts += [f"  refused {path}: {why}" for path, why in self.refused]
        return "\n".join(parts)


def local_state(project_dir: Path, path: str) -> FileState | None:
    """What the local project holds at ``path`` now (None: nothing, or a directory)."""
    try:
        found = read_local(os.path.join(project_dir, path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    if found is None:
        return FileState("", stat.S_IFDIR, 0)  # a directory or special file: never equal to a file
    st, data = found
    return FileState(hashlib.sha256(data).hexdigest(), normal_mode(st.st_mode), len(data))


def write_local(
    project_dir: Path,
    log: SessionLog,
    changes: CheckpointChanges,
    *,
    expected: WorkspaceState | None,
    report: ApplyReport,
) -> None:
    """Make ``project_dir`` hold ``changes``, each file atomically.

    With ``expected``, a path whose local content differs from it (changed
    locally since) is refused, by name; None writes regardless.
    """
    if not project_dir.is_dir():
        raise WorkspaceChangeError(f"the project directory {project_dir} does not exist any more; nothing was written")
    for path in sorted(set(changes.set) | set(changes.removed)):
        target = changes.set.get(path)
        full = os.path.join(project_dir, path)
        try:
            if expected is not None:
                now = local_state(project_dir, path)
                before = expected.get(path)
                if _content(now) != _content(before) and _content(now) != _content(target):
                    report.refused.append(
                        (path, "changed locally since the session started (use --force to overwrite)")
                    )
                    continue
            if target is None:
                if os.path.lexists(full):
                    os.unlink(full)
                    report.deleted.append(path)
                continue
            data = log.get_blob(target.sha256)
            _replace(full, target.mode, data)
            report.written.append(path)
        except BlobNotFound:
            report.refused.append((path, "its content is missing from the session store"))
        except OSError as exc:
            report.refused.append((path, exc.strerror or str(exc)))


def _content(state: FileState | None) -> tuple[str, int] | None:
    return None if state is None else (state.sha256, stat.S_IFMT(state.mode))


def _replace(full: str, mode: int, data: bytes) -> None:
    """Put ``data`` at ``full`` atomically: a temp name beside it, then rename."""
    directory = os.path.dirname(full)
    os.makedirs(directory, exist_ok=True)
    if os.path.isdir(full) and not os.path.islink(full):
        raise IsADirectoryError(21, "a directory is in the way", full)
    # The name is cut in bytes: a 255-byte name of multi-byte characters would not fit otherwise.
    stem = os.fsencode(os.path.basename(full))[:200]
    temp = os.path.join(directory, os.fsdecode(b"." + stem + f".tether-{secrets.token_hex(4)}".encode()))
    try:
        if stat.S_ISLNK(mode):
            os.symlink(os.fsdecode(data), temp)
        else:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o777)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode & 0o777)
            finally:
                os.close(fd)
        os.rename(temp, full)
    except BaseException:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise


def apply_to_project(log: SessionLog, project_dir: Path, *, force: bool = False) -> ApplyReport:
    """Write the copy workspace's changes into the local project; record what was applied."""
    base, seq = base_state(log)
    now = current_state(log)
    changes = diff_states(base, now)
    report = ApplyReport()
    write_local(project_dir, log, changes, expected=None if force else base, report=report)
    applied: dict[str, list | None] = {}
    for path in report.written:
        fs = now[path]
        applied[encode_path(path)] = [fs.sha256, fs.mode, fs.size]
    for path in report.deleted:
        applied[encode_path(path)] = None
    for path in changes.removed:  # already absent locally: applied all the same
        if path not in report.deleted and all(path != p for p, _ in report.refused):
            applied[encode_path(path)] = None
    if applied:
        record_checkpoint(
            log,
            CheckpointChanges({}, []),
            seq=seq + 1,
            after_tool_use_id=None,
            label="apply",
            files=len(now),
            bytes=sum(fs.size for fs in now.values()),
            extra={"applied": applied},
        )
    return report


# ----------------------------------------------------------------------------- rewind


@dataclass
class Prompt:
    """One user prompt of the live conversation, as rewind lists it."""

    number: int
    """1 = the first prompt of the session."""
    event: Event
    """The ``user`` event."""
    text: str
    """Its first line, shortened."""


REWIND_CHOICES = ("both", "conversation", "code")
"""Conversation and code, conversation only, code only."""

REWIND_EVENT = "rewind"
"""The log event that starts a rewound branch."""


def prompts(log: SessionLog) -> list[Prompt]:
    """The user prompts on the live branch, oldest first."""
    found: list[Prompt] = []
    for event in log.live_path():
        if event.type == "user":
            content = event.payload.get("content", "")
            text = (
                content
                if isinstance(content, str)
                else " ".join(block.get("text", "") for block in content if isinstance(block, dict))
            )
            first = text.strip().splitlines()[0] if text.strip() else ""
            found.append(Prompt(len(found) + 1, event, first[:100]))
    return found


@dataclass
class RewindPlan:
    """What rewinding to a prompt would do."""

    prompt: Prompt
    choice: str
    """One of ``REWIND_CHOICES``."""
    target: WorkspaceState
    """The workspace as it was when the prompt was sent."""
    changes: CheckpointChanges
    """What the workspace must change to get there (empty for ``conversation``)."""


def plan_rewind(log: SessionLog, number: int, choice: str) -> RewindPlan:
    """Where rewinding to prompt ``number`` leads; WorkspaceChangeError for a bad number or choice."""
    if choice not in REWIND_CHOICES:
        raise WorkspaceChangeError(f"rewind what? one of {', '.join(REWIND_CHOICES)}, not {choice!r}")
    listed = prompts(log)
    if not listed:
        raise WorkspaceChangeError("this session has no prompts to rewind to")
    if not 1 <= number <= len(listed):
        raise WorkspaceChangeError(f"no prompt {number}: this session's prompts are numbered 1 to {len(listed)}")
    prompt = listed[number - 1]
    target, _ = state_at(log, prompt.event.uuid)
    now = current_state(log)
    changes = diff_states(now, target) if choice != "conversation" else CheckpointChanges({}, [])
    return RewindPlan(prompt, choice, target, changes)


def record_rewind(log: SessionLog, plan: RewindPlan) -> None:
    """Write the rewind into the log: the branch (conversation) and the workspace state (code).

    The caller has already made the workspace hold ``plan.target`` (code), or left it (conversation only).
    """
    now = current_state(log)
    events = checkpoints_on_path(log)
    seq = int(events[-1].payload.get("seq", 0)) + 1 if events else 0
    if plan.choice in ("both", "conversation"):
        # The next prompt hangs where this one did; the old branch stays in the log. The marker
        # makes the new branch the newest leaf, which is what a later load continues from.
        parent = plan.prompt.event.parent_uuid
        assert parent is not None
        log.fork_at(parent)
        log.append(
            REWIND_EVENT, {"to_prompt": plan.prompt.number, "choice": plan.choice, "from": plan.prompt.event.uuid}
        )
    if plan.choice == "code":
        changes = diff_states(now, plan.target)
    elif plan.choice == "conversation":
        changes = diff_states(plan.target, now)  # the branch starts at the old state; the files stay as they are
    else:
        return  # on the new branch the state is the target already
    if changes.set or changes.removed:
        final = plan.target if plan.choice == "code" else now
        record_checkpoint(
            log,
            changes,
            seq=seq,
            after_tool_use_id=None,
            label="rewind",
            files=len(final),
            bytes=sum(fs.size for fs in final.values()),
        )
