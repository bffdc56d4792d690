"""The Textual app: transcript, prompt and status bar around one harness session.

It subscribes to the harness's events and sends it the user's prompts; nothing else.
"""

from __future__ import annotations

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Markdown
from textual.widgets._markdown import MarkdownStream

from agent import events as ev
from agent.harness import Harness, HarnessError, HarnessOptions
from agent.pricing import price_of
from agent.sandbox_client import SandboxError
from agent.workspace.changes import WorkspaceChangeError, prompts
from session.errors import SessionStoreError
from tui.permission import PermissionScreen
from tui.plan import PlanScreen
from tui.rewind import RewindChoice, RewindScreen
from tui.status import SessionStatus, StatusLine
from tui.widgets import DiffView, ErrorMessage, Notice, PromptArea, ToolCallPanel, UserMessage

HINTS = "Enter sends · Shift+Enter new line · Shift+Tab permission mode · Esc interrupts · Ctrl+Q quits"
"""Shown on the first screen, before the first prompt."""

WORKSPACE_COMMANDS = ("/diff", "/apply", "/rewind")
"""Slash commands the app answers itself (the rest go to the harness)."""


class TetherApp(App[int]):
    """tether's terminal UI."""

    CSS_PATH = "tether.tcss"
    TITLE = "tether"
    BINDINGS = [
        ("ctrl+q", "quit", "Quit"),
        ("escape", "interrupt", "Interrupt"),
        Binding("shift+tab", "cycle_mode", "Permission mode", priority=True),
    ]

    def __init__(self, options: HarnessOptions, harness: Harness | None = None, *, initial_prompt: str = "") -> None:
        super().__init__()
        self.options = options
        """What the user chose on the command line."""
        self.initial_prompt = initial_prompt
        """Sent as the first prompt once the session is ready (``tether "prompt"``); empty: none."""
        self.harness = harness or Harness(options, self.on_agent_event)
        """The session this app drives."""
        self._answer: Markdown | None = None
        self._stream: MarkdownStream | None = None
        self._tools: dict[str, ToolCallPanel] = {}
        self.status = SessionStatus(
            model=self.harness.model.model,
            # An unpriced model says so from the start, not "$0.0000" until its first answer.
            cost=0.0 if price_of(self.harness.model.model) is not None else None,
            permission_mode=options.permission_mode,
            host=self.harness.host_label,
        )
        """What the status bar shows."""

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield PromptArea(id="prompt", soft_wrap=True, show_line_numbers=False, disabled=True)
        yield StatusLine(self.status, id="status")

    def on_mount(self) -> None:
        transcript = self.query_one("#transcript", VerticalScroll)
        transcript.anchor()
        transcript.mount(Notice(HINTS, id="hints"))
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
            self.status.sandbox_state = "unavailable"
            await self._mount(ErrorMessage(message))
            self._refresh_status()
            return
        if self.harness.workspace is not None:
            self.status.workspace_mode = self.harness.workspace.mode
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
        for hints in self.query("#hints"):
            await hints.remove()
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
        self._thinking(True)
        try:
            await self.harness.run(text)
        finally:
            self._thinking(False)
            await self._end_answer()
            prompt = self.query_one("#prompt", PromptArea)
            prompt.disabled = False
            prompt.focus()

    async def on_agent_event(self, event: ev.AgentEvent) -> None:
        """Show one event from the harness."""
        if self.status.apply(event):
            self._refresh_status()
        if isinstance(event, (ev.TextDelta, ev.ToolStarted, ev.PermissionRequest, ev.PlanApprovalRequest)):
            self._thinking(False)
        elif isinstance(event, ev.ToolResults):
            self._thinking(True)
        if isinstance(event, ev.TextDelta):
            if self._stream is None:
                self._answer = Markdown(classes="assistant")
                await self._mount(self._answer)
                self._stream = Markdown.get_stream(self._answer)
            await self._stream.write(event.text)
        elif isinstance(event, ev.StreamRestarted):
            answer = self._answer
            await self._end_answer()
            if answer is not None:
                await answer.remove()
        elif isinstance(event, ev.AssistantMessage):
            await self._end_answer()
        elif isinstance(event, ev.ToolStarted):
            await self._end_answer()
            panel = ToolCallPanel(event.tool_use_id, event.name, event.input, view=event.view)
            self._tools[event.tool_use_id] = panel
            await self._mount(panel)
        elif isinstance(event, ev.ToolOutput):
            panel = self._tools.get(event.tool_use_id)
            if panel is not None:
                panel.write_output(event.text)
        elif isinstance(event, ev.ToolFinished):
            panel = self._tools.pop(event.tool_use_id, None)
            if panel is not None:
                panel.finish(event.content, event.is_error, view=event.view)
        elif isinstance(event, ev.Status):
            await self._mount(Notice(event.message))
        elif isinstance(event, ev.ErrorEvent):
            await self._end_answer()
            await self._mount(ErrorMessage(event.message))
        elif isinstance(event, ev.PermissionRequest):
            self.ask_permission(event)
        elif isinstance(event, ev.PlanApprovalRequest):
            self.ask_plan(event)

    @work(exit_on_error=False)
    async def ask_permission(self, request: ev.PermissionRequest) -> None:
        """Show the permission dialog and hand the answer back to the harness."""
        decision = ev.PermissionDecision(allow=False, reason="the dialog was closed without an answer")
        try:
            decision = await self.push_screen_wait(PermissionScreen(request))
        finally:
            if not request.future.done():
                request.future.set_result(decision)

    @work(exit_on_error=False)
    async def ask_plan(self, request: ev.PlanApprovalRequest) -> None:
        """Show the plan and hand the user's answer back to the harness."""
        decision = ev.PlanDecision(approve=False)
        try:
            decision = await self.push_screen_wait(PlanScreen(request))
        finally:
            if not request.future.done():
                request.future.set_result(decision)

    def _thinking(self, thinking: bool) -> None:
        self.query_one("#status", StatusLine).set_thinking(thinking)

    async def _end_answer(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
        self._stream = None
        self._answer = None

    async def _mount(self, widget) -> None:
        await self.query_one("#transcript", VerticalScroll).mount(widget)

    def _refresh_status(self) -> None:
        self.query_one("#status", StatusLine).refresh_status()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Shift+Tab cycles the mode on the main screen; in a dialog it moves the focus back."""
        if action == "cycle_mode":
            return self.screen is self.screen_stack[0]
        return True

    def action_cycle_mode(self) -> None:
        """Shift+Tab: default → acceptEdits → plan → default (bypassPermissions only if started in it)."""
        self.status.permission_mode = self.harness.cycle_permission_mode()
        self._refresh_status()

    def action_interrupt(self) -> None:
        """Stop the running turn: the model stream and any running tool."""
        self.harness.interrupt()

    async def action_quit(self) -> None:
        """Close the session cleanly, then exit."""
        await self.harness.close()
        self.exit(0)
