"""Who may run what: permission modes, allow/deny rules from settings, and asking the user.

Rules look like ``Bash``, ``Bash(git status)``, ``Bash(npm run:*)`` (a command
prefix), ``Edit(src/**)`` or ``Write(/workspace/notes.md)`` (a path glob,
relative to the workspace or absolute). Deny rules win over everything.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir

from agent import events as ev
from agent.globmatch import compile_glob
from agent.tools.base import Tool
from agent.tools.bash import SHELL_CONTROL
from agent.tools.catalog import default_tools
from agent.tools.views import CallView

MODES = ("default", "acceptEdits", "plan", "bypassPermissions")
CYCLED_MODES = ("default", "acceptEdits", "plan")
"""The modes Shift+Tab cycles through; bypassPermissions joins only a session started in it."""


def next_mode(mode: str, *, with_bypass: bool = False) -> str:
    """The mode after ``mode`` in the cycle (default → acceptEdits → plan → [bypassPermissions →] default)."""
    cycle = CYCLED_MODES + (("bypassPermissions",) if with_bypass else ())
    return cycle[(cycle.index(mode) + 1) % len(cycle)] if mode in cycle else cycle[0]


def tool_named(name: str) -> Tool:
    """The tool called ``name`` as every session offers it; an unknown name gets a tool that describes nothing."""
    for tool in default_tools():
        if tool.name == name:
            return tool
    return _UnknownTool(name)


class _UnknownTool(Tool):
    """A name no tool has: never read-only, and only a bare rule on its name covers it."""

    description = ""
    input_schema: dict[str, Any] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, ctx: Any, args: dict[str, Any]) -> Any:
        """Never runs: the tool set refuses unknown names before asking."""
        raise NotImplementedError


_RULE = re.compile(r"^(?P<tool>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<spec>.*)\))?$", re.DOTALL)


class SettingsError(ValueError):
    """A settings file or rule is malformed; the message names the file and the rule."""


@dataclass(frozen=True)
class Rule:
    """One allow or deny rule."""

    tool: str
    spec: str | None
    """What inside the tool's input it matches; None = every call of the tool."""

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse ``Tool`` or ``Tool(spec)``."""
        match = _RULE.match(text.strip())
        if not match:
            raise SettingsError(f"not a permission rule: {text!r} (expected e.g. Bash(git status:*) or Edit(src/**))")
        spec = match.group("spec")
        return cls(match.group("tool"), spec if spec not in (None, "", "*") else None)

    def __str__(self) -> str:
        return self.tool if self.spec is None else f"{self.tool}({self.spec})"

    def matches(self, tool: Tool, args: dict[str, Any], workdir: str) -> bool:
        """Whether this rule covers a call of ``tool`` with ``args``.

        As models and users know them from other agents, a rule covers the tool's
        whole family: a ``Read`` rule every tool that reads files (Read, Grep, Glob),
        an ``Edit`` rule every tool that changes one (Edit, Write). The tool says
        which family it is in and what in its input a spec matches.
        """
        if self.tool not in (tool.name, tool.permission_family):
            return False
        if self.spec is None:
            return True
        subject = tool.rule_subject(args)
        if subject is None:
            return False
        if tool.subject == "command":
            command = subject.strip()
            if self.spec.endswith(":*"):
                # A prefix rule must not let a second command ride along ("git status && rm -rf ~").
                if SHELL_CONTROL.search(command):
                    return False
                prefix = self.spec[:-2].strip()
                return command == prefix or command.startswith(prefix + " ")
            return command == self.spec.strip()
        path = subject
        # Match the path the tool will touch: `secret/x`, `./secret/x` and `/workspace/a/../secret/x`
        # must all meet a rule on `secret/**`.
        path = posixpath.normpath(posixpath.join(workdir, path))
        spec = self.spec
        root = workdir.rstrip("/") + "/"
        if spec.startswith("/"):
            if not spec.startswith(root):
                return compile_glob(spec.lstrip("/")).match(path.lstrip("/")) is not None
            spec = spec[len(root) :]
        if not path.startswith(root):
            return False
        pattern, relative = compile_glob(spec), path[len(root) :]
        if pattern.match(relative) is not None:
            return True
        # Grep and Glob take a directory: searching `secret` reads what `secret/**` covers.
        return tool.subject_is_directory and pattern.match(relative + "/") is not None


@dataclass
class PermissionSettings:
    """Allow and deny rules gathered from the settings files and the command line."""

    allow: list[Rule] = field(default_factory=list)
    deny: list[Rule] = field(default_factory=list)

    @classmethod
    def load(cls, paths: list[Path], *, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> PermissionSettings:
        """Read ``[permissions] allow/deny`` from each existing TOML file, then add the extra rules."""
        settings = cls()
        for path in paths:
            data = read_settings_file(path)
            if data is None:
                continue
            section = data.get("permissions", {})
            for key in ("allow", "deny"):
                values = section.get(key, [])
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    raise SettingsError(f"{path}: permissions.{key} must be a list of strings")
                try:
                    getattr(settings, key).extend(Rule.parse(v) for v in values)
                except SettingsError as exc:
                    raise SettingsError(f"{path}: {exc}") from exc
        settings.allow.extend(Rule.parse(r) for r in allow)
        settings.deny.extend(Rule.parse(r) for r in deny)
        return settings


def read_settings_file(path: Path) -> dict[str, Any] | None:
    """The TOML table in the settings file at ``path``; None if there is none; SettingsError if it cannot be read."""
    if not path.exists() and not path.is_symlink():
        return None  # no settings file is the common case, not a mistake
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise SettingsError(f"{path}: is a directory, not a settings file (remove it or make it a TOML file)") from None
    except OSError as exc:
        # A symlink loop, a dangling link, no permission: the user meant this file to count.
        raise SettingsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SettingsError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    return data


def project_settings_path(project_dir: Path) -> Path:
    """Where a project's settings live (rules the user allowed "always" go here)."""
    return project_dir / ".tether" / "settings.toml"


def user_settings_path() -> Path:
    """The user's own settings file."""
    return Path(user_config_dir("tether")) / "settings.toml"


def add_allow_rule(path: Path, rule: Rule) -> None:
    """Append ``rule`` to the allow list in the TOML file at ``path``, keeping the rest."""
    data: dict[str, Any] = read_settings_file(path) or {}
    perms = data.setdefault("permissions", {})
    allow = perms.setdefault("allow", [])
    if str(rule) not in allow:
        allow.append(str(rule))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(_dump_toml(data), encoding="utf-8")
    tmp.replace(path)


def _dump_toml(data: dict[str, Any]) -> str:
    """Enough TOML for settings: top-level tables of scalars and string lists."""
    lines: list[str] = []
    for table, values in data.items():
        if not isinstance(values, dict):
            lines.insert(0, f"{table} = {json.dumps(values)}")
            continue
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
        lines.append("")
    return "\n".join(lines) + "\n"


@dataclass
class PermissionGate:
    """Decides, for each tool call, whether it runs: by mode, rules, or by asking."""

    mode: str
    settings: PermissionSettings
    project_dir: Path
    workdir: Callable[[], str]
    """The sandbox workspace path (known once the sandbox is up)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"unknown permission mode {self.mode!r}; choose one of {', '.join(MODES)}")
        self.started_in = self.mode
        """The mode the session started in (bypassPermissions is cycled to only if it started there)."""

    def set_mode(self, mode: str) -> None:
        """Switch to ``mode`` (Shift+Tab, or a plan the user approved)."""
        if mode not in MODES:
            raise SettingsError(f"unknown permission mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode

    def cycle_mode(self) -> str:
        """Switch to the next mode of the Shift+Tab cycle; returns it."""
        self.set_mode(next_mode(self.mode, with_bypass=self.started_in == "bypassPermissions"))
        return self.mode

    async def check(
        self,
        tool: Tool | str,
        tool_use_id: str,
        args: dict[str, Any],
        emit: Callable[[ev.AgentEvent], Awaitable[None]],
        *,
        view: CallView | None = None,
    ) -> ev.PermissionDecision:
        """Allow or deny one call; may ask the user through a PermissionRequest event.

        What the call is (read-only or not, its rule family and subject, how to show
        it) comes from the tool itself; ``view``: how it is shown, if already worked out
        against the sandbox (a Write's diff against the file).
        """
        if isinstance(tool, str):
            tool = tool_named(tool)
        workdir = self.workdir()
        for rule in self.settings.deny:
            if rule.matches(tool, args, workdir):
                return ev.PermissionDecision(False, reason=f"denied by the rule {rule} in the settings")
        if self.mode == "plan" and not tool.read_only:
            return ev.PermissionDecision(
                False, reason="plan mode is on, so only read-only tools may run; present your plan instead"
            )
        if self.mode == "bypassPermissions" or not self.asks(tool):
            return ev.PermissionDecision(True)
        if any(rule.matches(tool, args, workdir) for rule in self.settings.allow):
            return ev.PermissionDecision(True)
        future: asyncio.Future[ev.PermissionDecision] = asyncio.get_running_loop().create_future()
        suggested = tool.suggested_rule(args, workdir)
        await emit(
            ev.PermissionRequest(
                tool_use_id, tool.name, args, future, view=view or tool.call_view(args), suggested_rule=suggested
            )
        )
        decision = await future
        decision.from_user = True
        if decision.allow and decision.always:
            rule = Rule.parse(decision.rule or suggested)
            self.settings.allow.append(rule)
            add_allow_rule(project_settings_path(self.project_dir), rule)
        return decision

    def asks(self, tool: Tool) -> bool:
        """Whether a call of ``tool`` needs the user's yes in the current mode (before allow rules)."""
        if tool.read_only or self.mode in ("plan", "bypassPermissions"):
            return False
        return not (self.mode == "acceptEdits" and tool.permission_family == "Edit")
