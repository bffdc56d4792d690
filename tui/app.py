"""The Textual app: transcript, prompt and status bar around one harness session.

It subscribes to the harness's events and sends it the user's prompts; nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from typing import TYPE_CHECKING, cast

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.driver import Driver
from textual.message import Message
from textual.screen import Screen
from textual.worker import WorkerCancelled

from agent.background_import import imported_in_background, note_interaction, run_in_background
from agent.options import HarnessError, HarnessOptions
from tui.commands import COMMANDS, SlashCommandProvider, command_errors, parse_command
from tui.history import PromptHistory
from tui.looks import use_looks
from tui.prompt import Completion, PromptArea, PromptBox, QueuedPrompts
from tui.status import SessionStatus, StatusLine, context_tokens_of
from tui.tool_panels import EXPAND_KEY
from tui.transcript import Transcript, session_usage
from tui.widgets import ErrorMessage, Notice, UserMessage

if TYPE_CHECKING:
    from agent import events as ev
    from agent.harness import Harness
    from session.events import Event
    from session.store import SessionLog

HINTS = "Enter sends · Shift+Enter new line · / commands · Shift+Tab permission mode · Esc interrupts · Ctrl+Q quits"
"""Shown on the first screen, before the first prompt."""
ESC_TWICE_SECONDS = 0.8
"""Two presses of Esc on an empty, idle prompt within this many seconds open rewind."""
COPY_ANSWER_KEY = "ctrl+t"
"""Copies the last answer's Markdown to the clipboard (``/copy`` does the same)."""


def _is_interaction(event: Message) -> bool:
    return isinstance(event, events.InputEvent) and not isinstance(event, events.MouseMove)


@functools.cache
def _noting_interactions(driver: type[Driver]) -> type[Driver]:
    """``driver``, calling ``note_interaction`` from its input thread for each key or click."""

    class NotingDriver(driver):  # type: ignore[valid-type, misc]
        def process_message(self, message: Message) -> None:
            if _is_interaction(message):
                note_interaction()
            super().process_message(message)

    return NotingDriver


class MainScreen(Screen[None]):
    """The transcript, the prompt and the status bar."""

    # Only the prompt takes focus on its own. Were the transcript focused while a resumed session's prompt
    # waits for the conversation to be drawn, moving focus to the prompt would restyle every entry (~30 ms).
    AUTO_FOCUS = "#prompt"

    def on_key(self, event: events.Key) -> None:
        """Typing before the prompt takes input (a resumed conversation is being drawn) is kept for it, not lost."""
        if cast("TetherApp", self.app).keep_early_key(event):
            event.stop()
            event.prevent_default()


class TetherApp(App[int]):
    """tether's terminal UI."""

    CSS_PATH = "tether.tcss"
    TITLE = "tether"
    BINDINGS = [
        ("ctrl+q", "quit", "Quit"),
        ("escape", "interrupt", "Interrupt"),
        Binding("shift+tab", "cycle_mode", "Permission mode", priority=True),
        # priority: they scroll the transcript even while the prompt (a TextArea, which has its own) has focus.
        Binding("pageup", "transcript_page(-1)", "Page up", show=False, priority=True),
        Binding("pagedown", "transcript_page(1)", "Page down", show=False, priority=True),
        Binding(EXPAND_KEY, "transcript_expand", "Expand output", show=False, priority=True),
        Binding(COPY_ANSWER_KEY, "copy_answer", "Copy answer", show=False, priority=True),
    ]
    COMMANDS = App.COMMANDS | {SlashCommandProvider}

    def __init__(
        self,
        options: HarnessOptions,
        harness: Harness | None = None,
        *,
        initial_prompt: str = "",
        pick_session: bool = False,
    ) -> None:
        super().__init__()
        use_looks(self.console)
        self.options = options
        """What the user chose on the command line."""
        options.preload_sdk = False  # begun once the first screen that takes input is drawn (see _warm_up)
        self.initial_prompt = initial_prompt
        """Sent as the first prompt once the session is ready (``tether "prompt"``); empty: none."""
        self._harness = harness
        """The session this app drives: made once the first screen is drawn (its imports take a while)."""
        self.status = self._fresh_status()
        """What the status bar shows."""
        self.pick_session = pick_session
        """Open the session picker first (``tether -r`` without an id); the harness starts on the picked session."""
        self.queued: list[str] = []
        """Prompts sent while a turn runs, sent in order when it ends."""
        self.busy = True
        """A turn, start-up, or a command that changes the session is running: prompts sent now are queued."""
        self.exit_session_id: str | None = None
        """The session to resume after the app exits (None: no session was kept)."""
        self._last_escape: float | None = None
        self._first_paint = asyncio.Event()
        """Set once the first screen is drawn: start-up's imports wait for it rather than share the CPU with it."""
        self._input_shown = asyncio.Event()
        """Set once a screen whose prompt takes input is drawn (a resumed one: with its conversation)."""
        self._start_error = ""
        self._history_composed = False
        """A resumed conversation was composed with the first screen."""
        """Why the session named on the command line cannot be resumed (shown once the screen is up)."""
        self._early_keys: list[events.Key] | None = [] if pick_session else None
        """Keys typed while the prompt waits to take input, typed into it once it does; None: not waiting."""

    def compose(self) -> ComposeResult:
        # A session resumed from the command line is composed with the screen: its first paint shows the
        # conversation and its usage, with a prompt that takes input (one layout and one paint, not two).
        resumed = self._open_resumed() if not self.pick_session else None
        live_path = None
        if resumed is not None:
            live_path = resumed.live_path()
            self._usage_from_log(resumed, live_path)
        self._history_composed = live_path is not None
        # Kept: the stream's hot path reaches them thousands of times a turn, without a query.
        self._transcript = Transcript(id="transcript", history=live_path)
        yield self._transcript
        yield PromptBox(
            history=PromptHistory.for_project(self.options.project_dir),
            commands=COMMANDS.complete,
            files=self.complete_files,
            # A new or resumed session's prompt takes input at once (what is sent waits for the session); with
            # the picker, once a session is picked; never when the session to resume cannot be opened.
            disabled_prompt=self.pick_session or bool(self._start_error),
        )
        self._status_line = StatusLine(self.status, id="status")
        yield self._status_line

    def _open_resumed(self) -> SessionLog | None:
        """The session ``-r``/``-c`` names, opened (None: a new session, or it cannot be: ``_start_error`` says why)."""
        if self._harness is not None:
            return None
        try:
            self.options.resumed_log = self.options.open_resumed()
        except HarnessError as exc:
            self._start_error = str(exc)
        return self.options.resumed_log

    @property
    def harness(self) -> Harness:
        """The session this app drives; made on first use (start-up makes it once the first screen is drawn)."""
        if self._harness is None:
            self._harness = self._new_harness()
        return self._harness

    @property
    def session_id(self) -> str | None:
        """The session's id once it is open (None before: while the picker or start-up runs)."""
        log = self._harness.log if self._harness is not None else None
        return log.session_id if log is not None else None

    def _new_harness(self) -> Harness:
        from agent.harness import Harness

        return Harness(self.options, self.on_agent_event)

    def _fresh_status(self) -> SessionStatus:
        from agent.pricing import price_of

        model = self._harness.model.model if self._harness is not None else self.options.model_name
        return SessionStatus(
            model=model,
            # An unpriced model says so from the start, not "$0.0000" until its first answer.
            cost=0.0 if price_of(model) is not None else None,
            permission_mode=self.options.permission_mode,
            host=self._harness.host_label if self._harness is not None else self.options.first_host,
        )

    def get_default_screen(self) -> Screen:
        return MainScreen(id="_default")

    def get_driver_class(self) -> type[Driver]:
        """Textual's driver for this terminal, which tells background imports of each key or click at once.

        The event loop hears of a key only once it gets the GIL from the threads importing at start-up (the
        SDK, the harness); told by the driver's input thread, they stand aside at their next module, and the
        key is answered sooner.
        """
        return _noting_interactions(super().get_driver_class())

    async def on_event(self, event: events.Event) -> None:
        """Keys and the mouse come first: background imports pause while the user is active."""
        if _is_interaction(event):
            note_interaction()  # the driver has said so in a terminal; not in tests' headless one
            if isinstance(event, events.Key) and event.key == "ctrl+j" and not self._input_shown.is_set():
                # Typed ahead, before the terminal was put in raw mode, Enter arrives as a line feed.
                event = events.Key("enter", "\r")
        await super().on_event(event)

    def on_mount(self) -> None:
        if not (self._history_composed or self._start_error):
            self.query_one(Transcript).mount(Notice(HINTS, id="hints"))
        self._refresh_status()
        if not self.prompt_area.disabled:
            self.prompt_area.focus()
        self.call_after_refresh(self._first_paint.set)
        if self.pick_session:
            self.pick_then_start()
        else:
            self.start_harness()

    @work(exit_on_error=False)
    async def pick_then_start(self) -> None:
        """``tether -r``: the picker, then the picked session (Esc leaves)."""
        from tui.picker import SessionPickerScreen

        picked = await self.push_screen_wait(SessionPickerScreen(self.options.project_dir))
        if not picked:
            await self.action_quit()
            return
        self.options.resume = picked
        self.start_harness()

    @property
    def prompt_area(self) -> PromptArea:
        """The prompt the user types in."""
        return self.query_one("#prompt", PromptArea)

    @property
    def tokens(self) -> int:
        """Tokens used by the session so far (this run)."""
        return self.status.tokens

    @property
    def cost(self) -> float | None:
        """The session's cost in USD; None when the model has no price."""
        return self.status.cost

    async def show(self, widget) -> None:
        """Add ``widget`` to the transcript."""
        await self._mount(widget)

    def refresh_status(self) -> None:
        """Redraw the status bar (the model or the session changed)."""
        self._refresh_status()

    async def complete_files(self, partial: str) -> list[Completion]:
        """Workspace paths starting with ``partial`` (``src/ma`` → ``@src/main.py``), from the sandbox."""
        if self._harness is None:
            return []
        lease, client = self._harness.lease, self._harness.client
        if lease is None or lease.info is None or client is None:
            return []
        directory, _, stem = partial.rpartition("/")
        entries = await client.list_dir(lease.sandbox_id, directory or ".")
        found = []
        for entry in entries:
            name = entry.path.rsplit("/", 1)[-1]
            if name.startswith(stem) and (stem.startswith(".") or not name.startswith(".")):
                slash = "/" if entry.kind == entry.DIRECTORY else ""
                found.append(Completion(f"@{directory + '/' if directory else ''}{name}{slash}"))
        return found[:50]

    @work(exclusive=True, group="harness", exit_on_error=False)
    async def start_harness(self) -> None:
        """Open the session and reach the sandbox host; the prompt takes input while the sandbox starts.

        A resumed session's conversation is shown first. Prompts sent before the sandbox is ready are
        queued (shown as such) and sent once it is.
        """
        self.busy = True
        if self.initial_prompt.strip():
            self.queued.append(self.initial_prompt)
            self.initial_prompt = ""
        prompt = self.query_one("#prompt", PromptArea)
        shown = False
        if self._harness is None:
            if self._start_error:
                await self._start_failed(self._start_error, prompt)
                return
            if self._history_composed:
                shown = True
                self._take_input(prompt)
            elif self.options.resume or self.options.continue_latest:
                # A resumed conversation needs only the session store: it is drawn, and the prompt takes
                # input, before the harness is imported.
                try:
                    self.options.resumed_log = self.options.open_resumed()
                except HarnessError as exc:
                    await self._start_failed(str(exc), prompt)
                    return
                if self.options.resumed_log is not None:
                    await self._show_resumed(self.options.resumed_log)
                    shown = True
                    self._take_input(prompt)
            # The harness's imports (gRPC, the workspace code) run on a thread, after the first screen is
            # drawn (a resumed one: with the conversation and a prompt that takes input): the prompt takes
            # input meanwhile, and the thread does not share the CPU with drawing that screen.
            await self._first_paint.wait()
            if shown:
                await self._input_shown.wait()
            await imported_in_background("agent.harness", name="harness-import")
            gc.freeze()  # what was imported lives as long as the app: the collector need not walk it again
        starting = asyncio.ensure_future(self.harness.start())
        try:
            opened = asyncio.ensure_future(self.harness.session_opened.wait())
            await asyncio.wait([starting, opened], return_when=asyncio.FIRST_COMPLETED)
            opened.cancel()
            resumed = self.harness.resumed_log
            if resumed is not None and not shown:
                await self._show_resumed(resumed)
            if not starting.done() and not shown:
                self._take_input(prompt)
            try:
                await starting
            except Exception as exc:  # noqa: BLE001 - whatever stops start-up must be shown, or the app hangs waiting
                from agent.sandbox_client import SandboxError

                if isinstance(exc, (HarnessError, SandboxError)):
                    message = str(exc)
                else:
                    message = f"tether could not start: {type(exc).__name__}: {exc}"
                await self._start_failed(message, prompt)
                return
        finally:
            if not starting.done():  # quit while starting: stop start-up before the harness is closed
                starting.cancel()
                await asyncio.wait([starting])
        if self.harness.workspace is not None:
            self.status.workspace_mode = self.harness.workspace.mode
        if resumed is not None and self.harness.loop is not None:
            self.harness.loop.totals.cost_usd = self.status.cost  # the session's cost goes on from where it was
        self._refresh_status()
        prompt.disabled = False
        if self.screen is self.screen_stack[0]:
            prompt.focus()
            self._type_early_keys()
        await self._turn_ended()

    async def _show_resumed(self, log: SessionLog) -> None:
        """Draw a resumed session's conversation, in place of the first screen's hints, and its usage."""
        live_path = log.live_path()
        for hints in self.query("#hints"):
            await hints.remove()
        await self.query_one(Transcript).show_history(live_path)
        self._usage_from_log(log, live_path)
        self._refresh_status()

    def keep_early_key(self, event: events.Key) -> bool:
        """Keep a key typed while the prompt waits for a picked session to be drawn; False if not the prompt's."""
        if self._early_keys is None or not (event.is_printable or event.key in ("enter", "backspace")):
            return False
        self._early_keys.append(event)
        return True

    def _take_input(self, prompt: PromptArea) -> None:
        """The prompt takes input (what is sent waits for the session), starting with what was typed before."""
        prompt.disabled = False
        prompt.focus()
        self._type_early_keys()
        # Once the screen shows the conversation and a prompt that takes input, threads import the SDK and
        # ready code highlighting while the sandbox starts (before, they would slow that screen down).
        self.call_after_refresh(self._warm_up)

    def _type_early_keys(self) -> None:
        # Posted after the focus moves to the prompt (also a posted message): they reach it in order.
        keys, self._early_keys = self._early_keys or [], None
        for key in keys:
            self.post_message(events.Key(key.key, key.character))

    async def _start_failed(self, message: str, prompt: PromptArea) -> None:
        """Start-up cannot go on: say why on screen (never a silent hang) and take no prompts."""
        self._early_keys = None
        self.status.sandbox_state = "unavailable"
        prompt.disabled = True
        await self._mount(ErrorMessage(message))
        self._refresh_status()

    def _warm_up(self) -> None:
        """The screen takes input: import the SDK and the Markdown renderer, and colour a resumed conversation's
        code once its lexers are built.

        The renderer is imported and the lexers are built on a thread (each lexer compiles its patterns:
        10-60 ms), so the first keys after the screen comes up are not held up by them; only the colouring
        itself runs here.
        """
        self._input_shown.set()
        from agent.model import preload_sdk

        transcript = self.query_one(Transcript)
        languages = transcript.code_languages()
        loop = asyncio.get_running_loop()

        def warm() -> None:
            from tui.streaming_markdown import warm_highlighting  # a new session's first answer will need it

            warm_highlighting(languages)
            with contextlib.suppress(RuntimeError):  # the app has ended meanwhile
                loop.call_soon_threadsafe(transcript.highlight_history)

        preload_sdk()
        run_in_background(warm, name="warm-highlighting")

    def _usage_from_log(self, log: SessionLog, live_path: list[Event]) -> None:
        """Tokens and cost of the whole session (every branch was paid for); context: ``live_path``, the branch in effect."""
        self.status.tokens, self.status.cost = session_usage(log.events())
        self.status.context_tokens = context_tokens_of(live_path)
        if self._harness is not None and self._harness.loop is not None:  # the session's cost goes on
            self._harness.loop.totals.cost_usd = self.status.cost

    async def redraw_conversation(self) -> None:
        """Show exactly the conversation now in effect (after a rewind), and the status that goes with it."""
        log = self.harness.log
        if log is None:
            return
        transcript = self.query_one(Transcript)
        await transcript.clear()
        live_path = log.live_path()
        await transcript.show_history(live_path)
        self._usage_from_log(log, live_path)
        self._refresh_status()

    async def on_prompt_area_submitted(self, message: PromptArea.Submitted) -> None:
        """Send the prompt or run the command; while a turn runs, queue it."""
        await self._send(message.text)

    async def _send(self, text: str) -> None:
        for hints in self.query("#hints"):
            await hints.remove()
        parsed = parse_command(text)
        command = COMMANDS.get(parsed[0]) if parsed and parsed[0] != "compact" else None
        if self.busy and (command is None or command.needs_idle):
            self.queued.append(text)
            self.query_one("#queued", QueuedPrompts).show(self.queued)
            return
        await self._mount(UserMessage(text))
        if parsed is None or parsed[0] == "compact":
            self.run_turn(text)  # /compact is the loop's own
        else:
            self.run_command(*parsed)

    def run_command(self, name: str, args: str) -> None:
        """Run the slash command ``/name args`` (one that changes the session waits for the turn)."""
        command = COMMANDS.get(name)
        if command is None:
            close = COMMANDS.close_to(name)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            self.call_later(self._mount, ErrorMessage(f"Unknown command /{name}.{hint} /help lists them."))
            return
        if command.needs_idle:
            self.busy = True
            self._run_idle_command(command.name, args)
        else:
            self._run_command(command.name, args)

    @work(exit_on_error=False)
    async def _run_command(self, name: str, args: str) -> None:
        await self._command(name, args)

    async def submit(self, text: str) -> None:
        """Send ``text`` as if typed in the prompt (queued while a turn runs)."""
        await self._send(text)

    @work(exclusive=True, group="turn", exit_on_error=False)
    async def _run_idle_command(self, name: str, args: str) -> None:
        try:
            await self._command(name, args)
        finally:
            await self._turn_ended()

    async def _command(self, name: str, args: str) -> None:
        command = COMMANDS.get(name)
        assert command is not None
        try:
            await command.handler(self, args)
        except command_errors() as exc:
            await self._mount(ErrorMessage(f"/{name}: {exc}"))

    async def _turn_ended(self) -> None:
        """The prompt is free again: send the next queued prompt, if any."""
        self.busy = False
        if self.queued:
            text = self.queued.pop(0)
            self.query_one("#queued", QueuedPrompts).show(self.queued)
            await self._send(text)

    async def switch_session(self, resume: str) -> None:
        """Close this session's harness and start another: ``resume`` names it, empty: a new one."""
        await self.harness.close()
        self.options.resume = resume
        self.options.continue_latest = False
        self.options.resumed_log = None
        self._harness = self._new_harness()
        self.status = self._fresh_status()
        self.query_one("#status", StatusLine).status = self.status
        self.prompt_area.disabled = True
        # The screen shows the session now in effect, nothing of the one left (a resumed one is drawn on start).
        await self.query_one(Transcript).clear()
        self._refresh_status()
        self.start_harness()
        await self.workers.wait_for_complete([w for w in self.workers if w.group == "harness"])
        if self.harness.log is not None:
            what = "Resumed session" if resume else "New session"
            await self._mount(Notice(f"{what} {self.harness.session_id}."))

    def run_turn(self, text: str) -> None:
        """Send ``text`` to the model; prompts sent before the turn ends are queued."""
        self.busy = True
        self.run_prompt(text)

    @work(exclusive=True, group="turn", exit_on_error=False)
    async def run_prompt(self, text: str) -> None:
        """Run one prompt through the loop; queued prompts follow when the turn ends."""
        self._thinking(True)
        try:
            await self.harness.run(text)
        finally:
            self._thinking(False)
            await self.query_one(Transcript).end_answer()
            await self._turn_ended()

    async def on_agent_event(self, event: ev.AgentEvent) -> None:
        """Show one event from the harness."""
        from agent import events as ev  # imported with the harness, before any event: not on the first screen's path

        if type(event) is ev.TextDelta:
            # The stream's hot path (thousands a turn): straight to the answer being written.
            if self._transcript.answer is not None and not self._status_line.thinking:
                await self._transcript.show(event)
                return
        if isinstance(event, ev.SandboxState):
            await self._sandbox_notice(self.status.sandbox_state, event)
        if self.status.apply(event):
            self._refresh_status()
        if isinstance(event, (ev.TextDelta, ev.ToolStarted, ev.PermissionRequest, ev.PlanApprovalRequest)):
            self._thinking(False)
        elif isinstance(event, ev.ToolResults):
            self._thinking(True)
        if await self.query_one(Transcript).show(event):
            return
        if isinstance(event, ev.PermissionRequest):
            self.ask_permission(event)
        elif isinstance(event, ev.PlanApprovalRequest):
            self.ask_plan(event)

    async def _sandbox_notice(self, before: str, event: ev.SandboxState) -> None:
        """One line in the transcript when the sandbox or its host goes away or comes back between prompts."""
        if event.state == before or before == "starting":
            return  # no change, or start-up (whose failure is shown as an error of its own)
        detail = f" ({event.detail})" if event.detail else ""
        if event.state == "unreachable":
            if event.host == "embedded":
                text = (
                    f"The embedded sandbox host stopped answering{detail}; tether starts a new one "
                    "and restores the workspace there."
                )
            else:
                text = f"Sandbox host {event.host} unreachable{detail}; tether keeps trying and says when it answers."
            await self._mount(ErrorMessage(text, classes="sandbox-notice"))
        elif event.state == "ready" and before == "unreachable":
            await self._mount(Notice(f"Sandbox host {event.host} answers again.", classes="sandbox-notice"))
        elif event.state == "lost" and before == "ready" and not self.busy:
            # Seen by the heartbeat between prompts; during a turn the tool's result and the restore say it.
            text = f"Sandbox lost{detail}; a new one is made from the same recipe, with the newest checkpoint."
            await self._mount(Notice(text, classes="sandbox-notice"))

    @work(exit_on_error=False)
    async def ask_permission(self, request: ev.PermissionRequest) -> None:
        """Show the permission dialog and hand the answer back to the harness."""
        from agent.events import PermissionDecision

        decision = PermissionDecision(allow=False, reason="the dialog was closed without an answer")
        try:
            from tui.permission import PermissionScreen

            decision = await self.push_screen_wait(PermissionScreen(request))
        finally:
            if (panel := self._transcript.tools.get(request.tool_use_id)) is not None:
                panel.runs_from_now()  # the time the dialog waited for the user is not the command's
            if not request.future.done():
                request.future.set_result(decision)

    async def _mount(self, widget) -> None:
        await self.query_one(Transcript).add(widget)

    async def action_transcript_page(self, direction: int) -> None:
        """Scroll the transcript a page up (-1) or down (1), wherever the focus is."""
        await self.query_one(Transcript).page(direction)

    def last_answer(self) -> str:
        """The Markdown of the newest assistant text: the one streaming, else the newest in the session log."""
        streaming = self.query_one(Transcript).answer
        if streaming is not None and streaming.source.strip():
            return streaming.source
        if self._harness is not None and self._harness.log is not None:
            from session.events import EventType
            from session.plaintext import assistant_text

            for event in reversed(self._harness.log.live_path()):
                if event.type == EventType.ASSISTANT and (text := assistant_text(event.payload)).strip():
                    return text
        return ""

    def action_copy_answer(self) -> None:
        """Copy the last answer's Markdown to the clipboard (OSC 52: the terminal must allow it)."""
        answer = self.last_answer()
        if not answer:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(answer)
        lines = answer.count("\n") + 1
        self.notify(f"Copied the last answer ({lines} line{'s' if lines != 1 else ''} of Markdown).")

    def action_transcript_expand(self) -> None:
        """Unfold long tool output and thinking, or fold them again."""
        self.query_one(Transcript).toggle_expanded()

    @work(exit_on_error=False)
    async def ask_plan(self, request: ev.PlanApprovalRequest) -> None:
        """Show the plan and hand the user's answer back to the harness."""
        from agent.events import PlanDecision

        decision = PlanDecision(approve=False)
        try:
            from tui.plan import PlanScreen

            decision = await self.push_screen_wait(PlanScreen(request))
        finally:
            if not request.future.done():
                request.future.set_result(decision)

    def _thinking(self, thinking: bool) -> None:
        self.query_one("#status", StatusLine).set_thinking(thinking)

    def _refresh_status(self) -> None:
        self.query_one("#status", StatusLine).refresh_status()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Shift+Tab cycles the mode on the main screen; in a dialog it moves the focus back."""
        if action == "cycle_mode":
            return self.screen is self.screen_stack[0]
        return True

    def action_cycle_mode(self) -> None:
        """Shift+Tab: default → acceptEdits → plan → default (bypassPermissions only if started in it)."""
        if self._harness is not None:
            self.status.permission_mode = self._harness.cycle_permission_mode()
        self._refresh_status()

    def action_interrupt(self) -> None:
        """Esc: stop the running turn (model stream and tool) at once; twice on an empty, idle prompt: rewind."""
        if (self._harness is not None and self._harness.interrupt()) or self.busy:
            self._last_escape = None
            return
        if self.prompt_area.disabled or self.prompt_area.text.strip():
            self._last_escape = None  # only two presses in a row on an empty prompt count
            return
        now = time.monotonic()
        if self._last_escape is not None and now - self._last_escape < ESC_TWICE_SECONDS:
            self._last_escape = None
            self.run_command("rewind", "")
            return
        self._last_escape = now
        self.notify("Esc again to rewind to an earlier prompt.", timeout=ESC_TWICE_SECONDS * 2)

    async def action_quit(self) -> None:
        """Close the session cleanly, then exit."""
        starting = [worker for worker in self.workers if worker.group == "harness"]
        for worker in starting:
            worker.cancel()
        if starting:  # (an empty list would wait for every worker, this one too)
            with contextlib.suppress(WorkerCancelled):
                await self.workers.wait_for_complete(starting)
        if self._harness is not None:
            await self._harness.close()
            # An unused new session is removed on close; only a kept one can be resumed.
            self.exit_session_id = self._harness.log.session_id if self._harness.log is not None else None
        self.exit(0)
