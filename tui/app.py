"""The Textual app: transcript, prompt and status bar around one harness session.

It subscribes to the harness's events and sends it the user's prompts; nothing else.
"""

from __future__ import annotations

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding

from agent import events as ev
from agent.harness import Harness, HarnessError, HarnessOptions
from agent.pricing import price_of
from agent.sandbox_client import SandboxError
from agent.workspace.changes import WorkspaceChangeError, prompts
from session.errors import SessionStoreError
from tui.permission import PermissionScreen
from tui.rewind import RewindChoice, RewindScreen
from tui.tool_panels import EXPAND_KEY
from tui.transcript import Transcript, session_usage
from tui.widgets import DiffView, ErrorMessage, Notice, PromptArea, StatusBar, UserMessage

WORKSPACE_COMMANDS = ("/diff", "/apply", "/rewind")
"""Slash commands the app answers itself (the rest go to the harness)."""


class TetherApp(App[int]):
    """tether's terminal UI."""

    CSS_PATH = "tether.tcss"
    TITLE = "tether"
    BINDINGS = [
        ("ctrl+q", "quit", "Quit"),
        ("escape", "interrupt", "Interrupt"),
        # priority: they scroll the transcript even while the prompt (a TextArea, which has its own) has focus.
        Binding("pageup", "transcript_page(-1)", "Page up", show=False, priority=True),
        Binding("pagedown", "transcript_page(1)", "Page down", show=False, priority=True),
        Binding(EXPAND_KEY, "transcript_expand", "Expand output", show=False, priority=True),
    ]

    def __init__(self, options: HarnessOptions, harness: Harness | None = None, *, initial_prompt: str = "") -> None:
        super().__init__()
        self.options = options
        """What the user chose on the command line."""
        self.initial_prompt = initial_prompt
        """Sent as the first prompt once the session is ready (``tether "prompt"``); empty: none."""
        self.harness = harness or Harness(options, self.on_agent_event)
        """The session this app drives."""
        self._tokens = 0
        # An unpriced model says so from the start, not "$0.0000" until its first answer.
        self._cost: float | None = 0.0 if price_of(self.harness.model.model) is not None else None
        self._sandbox_state = "starting"

    def compose(self) -> ComposeResult:
        yield Transcript(id="transcript")
        yield PromptArea(id="prompt", soft_wrap=True, show_line_numbers=False, disabled=True)
        yield StatusBar(id="status")

    def on_mount(self) -> None:
        self._refresh_status()
        self.start_harness()

    @work(exclusive=True, group="harness", exit_on_error=False)
    async def start_harness(self) -> None:
        """Reach the sandbox host and open the session."""
        try:
            await self.harness.start()
        except Exception as exc:  # noqa: BLE001 - whatever stops start-up must be shown, or the app hangs waiting
            if isinstance(exc, (HarnessError, SandboxError)):
                message = str(exc)
            else:
                message = f"tether could not start: {type(exc).__name__}: {exc}"
            self._sandbox_state = "unavailable"
            await self._mount(ErrorMessage(message))
            self._refresh_status()
            return
        if self.harness.log is not None and (self.options.resume or self.options.continue_latest):
            live_path = self.harness.log.live_path()
            await self.query_one(Transcript).show_history(live_path)
            self._tokens, self._cost = session_usage(live_path)
            if self.harness.loop is not None:  # the session's cost goes on from where it was
                self.harness.loop.totals.cost_usd = self._cost
        self._sandbox_state = "ready"
        self._refresh_status()
        prompt = self.query_one("#prompt", PromptArea)
        prompt.disabled = False
        prompt.focus()
        if self.initial_prompt.strip():
            await self._send(self.initial_prompt)

    async def on_prompt_area_submitted(self, message: PromptArea.Submitted) -> None:
        """Send the prompt to the harness, or run one of the app's own commands."""
        await self._send(message.text)

    async def _send(self, text: str) -> None:
        prompt = self.query_one("#prompt", PromptArea)
        prompt.disabled = True
        await self._mount(UserMessage(text))
        words = text.strip().split()
        if words and words[0] in WORKSPACE_COMMANDS:
            self.run_workspace_command(words[0], words[1:])
        else:
            self.run_prompt(text)

    @work(exclusive=True, group="turn", exit_on_error=False)
    async def run_workspace_command(self, command: str, args: list[str]) -> None:
        """``/diff``, ``/apply [--force]`` or ``/rewind``: the session's workspace, shown in the transcript."""
        try:
            if command == "/diff":
                diff = await self.harness.diff()
                await self._mount(DiffView(diff) if diff else Notice("No changes to the project in this session."))
            elif command == "/apply":
                report = await self.harness.apply(force="--force" in args)
                await self._mount(Notice(f"Applied to {self.harness.workspace.project_dir}: {report.summary()}"))
            else:
                await self._rewind()
        except (WorkspaceChangeError, SessionStoreError, SandboxError) as exc:
            await self._mount(ErrorMessage(f"{command}: {exc}"))
        finally:
            prompt = self.query_one("#prompt", PromptArea)
            prompt.disabled = False
            prompt.focus()

    async def _rewind(self) -> None:
        assert self.harness.log is not None
        listed = prompts(self.harness.log)
        if not listed:
            await self._mount(Notice("Nothing to rewind: no prompt has been sent yet."))
            return

        async def describe(number: int, choice: str) -> list[str]:
            plan = await self.harness.plan_rewind(number, choice)
            changes = plan.changes
            return [
                f"{'delete ' if path in changes.removed else 'restore'} {path}"
                for path in sorted({*changes.set, *changes.removed})
            ]

        picked: RewindChoice | None = await self.push_screen_wait(RewindScreen(listed, describe))
        if picked is None:
            return
        plan = await self.harness.plan_rewind(picked.number, picked.choice)
        report = await self.harness.rewind(plan)
        files = len(plan.changes.set) + len(plan.changes.removed)
        note = f"Rewound to before prompt {picked.number}"
        note += {
            "both": f": conversation and {files} file(s)",
            "conversation": ": conversation only",
            "code": f": {files} file(s), conversation kept",
        }[picked.choice]
        if report.refused:
            note += f"; {len(report.refused)} file(s) could not be restored: " + ", ".join(
                p for p, _ in report.refused[:5]
            )
        await self._mount(Notice(note + "."))
        if picked.choice != "code":
            # The rewound prompt comes back to be edited and sent again.
            self.query_one("#prompt", PromptArea).text = (
                plan.prompt.event.payload.get("content", "")
                if isinstance(plan.prompt.event.payload.get("content"), str)
                else plan.prompt.text
            )

    @work(exclusive=True, group="turn", exit_on_error=False)
    async def run_prompt(self, text: str) -> None:
        """Run one prompt through the loop; the prompt comes back when the turn ends."""
        try:
            await self.harness.run(text)
        finally:
            await self.query_one(Transcript).end_answer()
            prompt = self.query_one("#prompt", PromptArea)
            prompt.disabled = False
            prompt.focus()

    async def on_agent_event(self, event: ev.AgentEvent) -> None:
        """Show one event from the harness."""
        if await self.query_one(Transcript).show(event):
            return
        if isinstance(event, ev.UsageUpdate):
            self._tokens += (
                event.input_tokens
                + event.output_tokens
                + event.cache_read_input_tokens
                + event.cache_creation_input_tokens
            )
            self._cost = event.session_cost_usd
            self._refresh_status()
        elif isinstance(event, ev.PermissionRequest):
            self.ask_permission(event)

    @work(exit_on_error=False)
    async def ask_permission(self, request: ev.PermissionRequest) -> None:
        """Show the permission dialog and hand the answer back to the harness."""
        decision = ev.PermissionDecision(allow=False, reason="the dialog was closed without an answer")
        try:
            decision = await self.push_screen_wait(PermissionScreen(request))
        finally:
            if not request.future.done():
                request.future.set_result(decision)

    async def _mount(self, widget) -> None:
        await self.query_one(Transcript).add(widget)

    def _refresh_status(self) -> None:
        cost = "cost unknown" if self._cost is None else f"${self._cost:.4f}"
        workspace = self.harness.workspace
        mode = f" · workspace {workspace.mode}" if workspace is not None else ""
        self.query_one("#status", StatusBar).update(
            f"{self.harness.model.model} · {self._tokens:,} tokens · {cost}{mode} · sandbox {self.harness.host_label}: {self._sandbox_state}"
        )

    async def action_transcript_page(self, direction: int) -> None:
        """Scroll the transcript a page up (-1) or down (1), wherever the focus is."""
        await self.query_one(Transcript).page(direction)

    def action_transcript_expand(self) -> None:
        """Unfold long tool output and thinking, or fold them again."""
        self.query_one(Transcript).toggle_expanded()

    def action_interrupt(self) -> None:
        """Stop the running turn: the model stream and any running tool."""
        self.harness.interrupt()

    async def action_quit(self) -> None:
        """Close the session cleanly, then exit."""
        await self.harness.close()
        self.exit(0)
