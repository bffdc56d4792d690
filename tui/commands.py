"""The slash commands: one table of name, description and handler, for the prompt and the command palette."""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual.command import DiscoveryHit, Hit, Hits, Provider

from session.plaintext import counted
from tui.prompt import Completion
from tui.widgets import DiffView, ErrorMessage, Notice

if TYPE_CHECKING:
    from tui.app import TetherApp
    from tui.rewind import RewindChoice

# The table is read to draw the first screen (completion, the palette); what a command runs is imported
# when it runs, so gRPC, the session store and the workspace code are not on the way to the first paint.

Handler = Callable[["TetherApp", str], Awaitable[None]]
"""Runs a command: the app, and the words after the command's name."""


@dataclass(frozen=True)
class SlashCommand:
    """One command the user can type as ``/name [args]`` or pick in the command palette."""

    name: str
    """Without the slash."""
    description: str
    """One line, shown in completions, the palette and ``/help``."""
    handler: Handler
    arguments: str = ""
    """How the arguments are written (``NAME``, ``[md|json] [FILE]``); empty: none."""
    needs_idle: bool = True
    """Waits for the running turn to end (it changes the session); False: runs at once."""


class CommandTable:
    """The commands by name, in the order ``/help`` lists them."""

    def __init__(self, commands: list[SlashCommand]) -> None:
        self.commands = {command.name: command for command in commands}
        """Every command, by name."""

    def get(self, name: str) -> SlashCommand | None:
        """The command called ``name`` (with or without its slash)."""
        return self.commands.get(name.lstrip("/"))

    def complete(self, prefix: str) -> list[Completion]:
        """Commands whose name starts with ``prefix`` (``/co`` → ``/compact``, ``/cost``)."""
        word = prefix.lstrip("/")
        return [Completion(f"/{c.name}", c.description) for c in self.commands.values() if c.name.startswith(word)]

    def close_to(self, name: str) -> list[str]:
        """The commands whose names look like ``name`` (for an unknown one)."""
        word = name.lstrip("/")
        close = difflib.get_close_matches(word, list(self.commands), n=3, cutoff=0.5)
        close += [n for n in self.commands if n.startswith(word[:2]) and n not in close] if len(word) >= 2 else []
        return [f"/{n}" for n in close[:4]]

    def help_text(self) -> str:
        """Every command with its arguments and description, and the keys."""
        width = max(len(c.name) + len(c.arguments) + 2 for c in self.commands.values())
        lines = ["Commands:"]
        for c in self.commands.values():
            usage = f"/{c.name} {c.arguments}".rstrip()
            lines.append(f"  {usage:<{width}}  {c.description}")
        lines += [
            "Keys:",
            "  Enter send · Shift+Enter or Ctrl+J new line · Up/Down at the first/last line: history",
            "  Tab or Enter accept a completion · @path completes workspace files · Esc interrupt the turn",
            "  Ctrl+P command palette · Ctrl+Q quit · a prompt sent while the agent works is queued",
            "  Esc twice on an empty prompt: rewind · Ctrl+O expand tool output",
            "  Drag the mouse to select, Ctrl+C copies it · Ctrl+T copies the last answer's Markdown",
        ]
        return "\n".join(lines)


def parse_command(text: str) -> tuple[str, str] | None:
    """``("name", "args")`` if ``text`` is a slash command (``/word ...``), else None (``/etc/hosts ...`` is a prompt)."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    name, _, args = stripped.partition(" ")
    if not name[1:] or not all(ch.isalnum() or ch in "-_" for ch in name[1:]):
        return None
    return name[1:], args.strip()


# ----------------------------------------------------------------------------- handlers


async def _help(app: TetherApp, args: str) -> None:
    await app.show(Notice(Text(COMMANDS.help_text()), classes="help"))  # Text: [ID] is no markup


async def _new(app: TetherApp, args: str) -> None:
    await app.switch_session("")


async def _clear(app: TetherApp, args: str) -> None:
    await app.switch_session("")


async def _resume(app: TetherApp, args: str) -> None:
    if args:
        await app.switch_session(args)
        return
    from tui.picker import SessionPickerScreen

    picked = await app.push_screen_wait(SessionPickerScreen(app.options.project_dir))
    if picked:
        await app.switch_session(picked)


async def _compact(app: TetherApp, args: str) -> None:
    await app.submit(f"/compact {args}".strip())


async def _cost(app: TetherApp, args: str) -> None:
    cost = "unknown (the model has no price in tether's table)" if app.cost is None else f"${app.cost:.4f}"
    await app.show(Notice(f"Session {app.harness.model.model}: {app.tokens:,} tokens, cost {cost}."))


async def _model(app: TetherApp, args: str) -> None:
    if not args:
        await app.show(Notice(f"Model: {app.harness.model.model}. Change it with /model NAME."))
        return
    app.harness.model.model = args.split()[0]
    app.status.model = app.harness.model.model
    app.refresh_status()
    await app.show(Notice(f"Model set to {app.harness.model.model} for the next answers."))


async def _permissions(app: TetherApp, args: str) -> None:
    loop = app.harness.loop
    gate = loop.gate if loop is not None else None
    if gate is None:
        await app.show(Notice(f"Permission mode: {app.options.permission_mode} (the session is not started yet)."))
        return
    lines = [f"Permission mode: {gate.mode}"]
    for kind in ("allow", "deny"):
        rules = getattr(gate.settings, kind)
        lines.append(f"{kind.capitalize()} rules: " + (", ".join(str(rule) for rule in rules) if rules else "none"))
    await app.show(Notice("\n".join(lines)))


async def _sandbox(app: TetherApp, args: str) -> None:
    harness = app.harness
    lease = harness.lease
    if lease is None or lease.info is None:
        await app.show(Notice(f"Sandbox on {harness.host_label}: not provisioned yet."))
        return
    info = lease.info
    lines = [
        f"Host: {lease.host}",
        f"Sandbox: {info.sandbox_id} (generation {lease.generation}, provider {info.provider})",
        f"Isolation: {info.isolation or 'unknown'}",
        f"Recipe: {lease.recipe.name or 'default'}" + (f", image {lease.recipe.image}" if lease.recipe.image else ""),
        f"Workdir: {lease.workdir}",
    ]
    if lease.last_loss:
        lines.append(f"Last replaced because: {lease.last_loss}")
    workspace = harness.workspace
    if workspace is not None:
        checkpointer = workspace.checkpointer
        count = checkpointer.seq + 1
        newest = f", newest after {checkpointer.last_tool}" if checkpointer.last_tool else ""
        lines.append(f"Workspace: {workspace.mode} ({workspace.project_dir})")
        lines.append(f"Checkpoints: {count} ({counted(len(checkpointer.state), 'file')}{newest})")
    await app.show(Notice("\n".join(lines)))


async def _diff(app: TetherApp, args: str) -> None:
    diff = await app.harness.diff()
    await app.show(DiffView(diff) if diff else Notice("No changes to the project in this session."))


async def _apply(app: TetherApp, args: str) -> None:
    report = await app.harness.apply(force="--force" in args.split())
    assert app.harness.workspace is not None
    await app.show(Notice(f"Applied to {app.harness.workspace.project_dir}: {report.summary()}"))


async def _export(app: TetherApp, args: str) -> None:
    words = args.split()
    format = "md"
    if words and words[0] in ("md", "json"):
        format = words.pop(0)
    log = app.harness.log
    if log is None:
        await app.show(ErrorMessage("/export: the session has not started"))
        return
    target = Path(words[0]).expanduser() if words else Path(f"tether-{log.session_id[:8]}.{format}")
    if not target.is_absolute():
        target = app.options.project_dir / target
    from session.cli import export_text

    target.write_text(export_text(log, format), encoding="utf-8")
    await app.show(Notice(f"Exported the session to {target}"))


async def _copy(app: TetherApp, args: str) -> None:
    app.action_copy_answer()


async def _quit(app: TetherApp, args: str) -> None:
    await app.action_quit()


async def _rewind(app: TetherApp, args: str) -> None:
    from agent.workspace.changes import prompts
    from tui.rewind import RewindScreen

    harness = app.harness
    assert harness.log is not None
    listed = prompts(harness.log)
    if not listed:
        await app.show(Notice("Nothing to rewind: no prompt has been sent yet."))
        return

    async def describe(number: int, choice: str) -> list[str]:
        plan = await harness.plan_rewind(number, choice)
        changes = plan.changes
        return [
            f"{'delete ' if path in changes.removed else 'restore'} {path}"
            for path in sorted({*changes.set, *changes.removed})
        ]

    picked: RewindChoice | None = await app.push_screen_wait(RewindScreen(listed, describe))
    if picked is None:
        return
    plan = await harness.plan_rewind(picked.number, picked.choice)
    report = await harness.rewind(plan)
    files = len(plan.changes.set) + len(plan.changes.removed)
    note = f"Rewound to before prompt {picked.number}"
    note += {
        "both": f": conversation and {files} file(s)",
        "conversation": ": conversation only",
        "code": f": {files} file(s), conversation kept",
    }[picked.choice]
    if report.refused:
        note += f"; {len(report.refused)} file(s) could not be restored: " + ", ".join(p for p, _ in report.refused[:5])
    if picked.choice != "code":
        await app.redraw_conversation()  # the screen shows the branch that goes on, not the prompts taken back
    await app.show(Notice(note + "."))
    if picked.choice != "code":
        # The rewound prompt comes back to be edited and sent again.
        content = plan.prompt.event.payload.get("content")
        app.prompt_area.text = content if isinstance(content, str) else plan.prompt.text


COMMANDS = CommandTable(
    [
        SlashCommand("help", "list the commands and keys", _help, needs_idle=False),
        SlashCommand("new", "start a new session (this one can be resumed)", _new),
        SlashCommand("resume", "pick a session to resume, or resume ID", _resume, "[ID]"),
        SlashCommand("rewind", "go back to before an earlier prompt (conversation, code or both)", _rewind),
        SlashCommand(
            "compact", "summarise the conversation to free context", _compact, "[instructions]", needs_idle=False
        ),
        SlashCommand("cost", "tokens and cost of this session", _cost, needs_idle=False),
        SlashCommand("model", "show or change the model", _model, "[NAME]", needs_idle=False),
        SlashCommand("permissions", "the permission mode and rules", _permissions, needs_idle=False),
        SlashCommand("sandbox", "host, sandbox, recipe, isolation and checkpoints", _sandbox, needs_idle=False),
        SlashCommand("diff", "the session's changes to the project", _diff),
        SlashCommand("apply", "write a copy workspace's changes into the project", _apply, "[--force]"),
        SlashCommand("export", "write the session to a file", _export, "[md|json] [FILE]"),
        SlashCommand("copy", "copy the last answer's Markdown to the clipboard", _copy, needs_idle=False),
        SlashCommand("clear", "clear the screen and the conversation (a new session)", _clear),
        SlashCommand("quit", "close the session and exit", _quit, needs_idle=False),
    ]
)
"""Every slash command."""


def command_errors() -> tuple[type[Exception], ...]:
    """Failures a command reports in the transcript as ``/name: message``."""
    from agent.sandbox_client import SandboxError
    from agent.workspace.changes import WorkspaceChangeError
    from session.errors import SessionStoreError

    return (WorkspaceChangeError, SessionStoreError, SandboxError, OSError)


class SlashCommandProvider(Provider):
    """The slash commands in the command palette (Ctrl+P)."""

    async def discover(self) -> Hits:
        """Every command, before anything is typed."""
        for command in COMMANDS.commands.values():
            yield DiscoveryHit(f"/{command.name}", partial(self._pick, command), help=command.description)

    async def search(self, query: str) -> Hits:
        """Commands matching what is typed."""
        matcher = self.matcher(query)
        for command in COMMANDS.commands.values():
            score = matcher.match(f"/{command.name} {command.description}")
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(f"/{command.name}"),
                    partial(self._pick, command),
                    help=command.description,
                )

    def _pick(self, command: SlashCommand) -> None:
        app: TetherApp = self.app  # type: ignore[assignment]
        if command.arguments and not command.arguments.startswith("["):
            app.prompt_area.text = f"/{command.name} "  # it needs its arguments: they are typed in the prompt
            app.prompt_area.move_cursor(app.prompt_area.document.end)
            return
        app.run_command(command.name, "")
