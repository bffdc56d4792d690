"""The transcript: prompts, answers, tool calls and notices, anchored to the bottom as they stream.

It shows the harness's events (``show``) and a resumed session's live path
(``show_history``). Past ``HIGH_WATER`` entries the oldest are pruned from the DOM
(they stay in the session log), so a long session stays fluid.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from textual._styles_cache import StylesCache
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget

from agent.background_import import quiet_in
from session.events import Event, EventType
from session.plaintext import content_text
from tui.tool_panels import FoldedText, ThinkingBlock, ToolPanel
from tui.widgets import DiffView, ErrorMessage, Notice, UserMessage

if TYPE_CHECKING:
    from agent import events as ev
    from tui.streaming_markdown import MarkdownView

HIGH_WATER = 120
"""Entries kept in the DOM before the oldest are pruned (kept as the little it takes to build them again)."""
LOW_WATER = 80
"""Entries left after pruning."""
RESUME_ENTRIES = 12
"""At most this many entries of a resumed session are built at start; the newest, and only as many as fill
``RESUME_SCREENS`` screens (each must be rendered to be laid out, and the prompt waits for them)."""
RESUME_SCREENS = 1.5
"""Screens' worth of rows (estimated from the entries' text) built at start when resuming."""
EARLIER_BATCH = 40
"""At most this many older entries are built at a time when the view reaches the top (as many as fill
``EARLIER_SCREENS`` screens)."""
EARLIER_SCREENS = 1
"""Screens' worth of rows (estimated) of older entries built at a time."""
YIELD_EVERY = 1 / 20
"""Longest time (seconds) a stream keeps the event loop from keys and frames (a frame costs ~10 ms)."""


class Transcript(VerticalScroll):
    """The conversation so far, streaming in at the bottom."""

    DEFAULT_CSS = """
    Transcript {
        height: 1fr;
        padding: 0 1;
        /* The width stays the same when the scrollbar appears: every line is rendered at one width. */
        scrollbar-gutter: stable;
    }
    Transcript > MarkdownView.assistant {
        margin: 1 0 0 0;
        padding: 0 1;
    }
    Transcript > Notice.pruned {
        text-style: italic;
    }
    """

    def __init__(self, *, id: str | None = None, history: list[Event] | None = None) -> None:
        super().__init__(id=id)
        self._history = history
        """A resumed session's live path, composed with the transcript (so the first screen shows it)."""
        self.answer: MarkdownView | None = None
        """The assistant text still streaming, if any."""
        self.thinking: ThinkingBlock | None = None
        """The thinking still streaming, if any."""
        self.tools: dict[str, ToolPanel] = {}
        """Tool calls still running, by tool_use id."""
        self.pruned = 0
        """How many entries were pruned from the top."""
        self.expanded = False
        """Whether folded output and thinking are shown whole (the expand key)."""
        self._yielded = 0.0
        self.history_coloured = asyncio.Event()
        """Set once a resumed conversation's code, drawn plain at first, is drawn in colour."""
        self._earlier: list[Callable[[], Widget]] = []
        self._showing_earlier = False
        self._to_colour: list[MarkdownView] = []
        self._colouring = False
        self._prefetching = False

    def compose(self) -> ComposeResult:
        if self._history is not None:
            yield from self._resumed_entries(self._history)
            self._history = None

    def on_mount(self) -> None:
        """Stay at the bottom while the user has not scrolled up; reaching the top shows earlier entries."""
        self.anchor()
        self.watch(self, "scroll_y", self._scrolled, init=False)

    def _scrolled(self, scroll_y: float) -> None:
        # At the top, the next older entries are built once this scroll is on screen. Within a screen of it,
        # they are built ahead, once the user pauses, so that scrolling on seldom waits for them. Either way
        # what is on screen does not move. Not at the bottom: a resumed screen barely taller than the view is
        # not built further unasked.
        if not self._earlier or self._showing_earlier or scroll_y >= self.max_scroll_y:
            return
        if scroll_y == 0:
            self.call_after_refresh(self.show_earlier)
        elif scroll_y <= self.size.height and not self._prefetching:
            self._prefetching = True
            self._prefetch()

    def _prefetch(self) -> None:
        if (wait := quiet_in()) > 0:
            self.set_timer(wait, self._prefetch)
            return
        self._prefetching = False
        if self._earlier and self.scroll_y <= self.size.height and self.scroll_y < self.max_scroll_y:
            self.call_after_refresh(self.show_earlier)

    async def add(self, *widgets: Widget) -> None:
        """Append entries at the bottom, pruning the oldest past the high-water mark.

        Not while the user reads further up (they may be reading what would go): the next
        entry added with the view at the bottom prunes.
        """
        at_bottom = self.scroll_y >= self.max_scroll_y
        await self.mount_all(widgets)
        if len(self.children) > HIGH_WATER and at_bottom:
            await self.prune(len(self.children) - LOW_WATER)

    async def clear(self) -> None:
        """Remove every entry: the conversation shown is about to be replaced (rewind, resume, new session)."""
        await self.remove_children()
        forget_removed_widgets()
        self.answer = None
        self.thinking = None
        self.tools.clear()
        self.pruned = 0
        self._earlier = []
        self._to_colour.clear()

    async def prune(self, count: int) -> None:
        """Remove the ``count`` oldest entries from the DOM; PageUp at the top builds them again."""
        old = [child for child in self.children if not child.has_class("earlier")][:count]
        self.pruned += len(old)
        self._earlier.extend(factory for factory in map(rebuilder, old) if factory is not None)
        await self.remove_children(old)
        forget_removed_widgets()
        notes = self.query_children(".earlier")
        if notes:
            notes.first(Notice).update(self._earlier_note())
        elif self._earlier:
            await self.mount(Notice(self._earlier_note(), classes="pruned earlier"), before=0)

    def toggle_expanded(self) -> None:
        """Unfold every folded output and thinking block, or fold them again."""
        self.expanded = not self.expanded
        for widget in self.query(FoldedText):
            widget.expanded = self.expanded

    async def end_answer(self) -> None:
        """The streaming answer (and thinking) is complete."""
        self.answer = None
        self.thinking = None

    async def show(self, event: ev.AgentEvent) -> bool:
        """Show one harness event; False if it is not the transcript's to show."""
        from agent import events as ev  # imported with the harness, before any event: not on the first screen's path

        if isinstance(event, ev.TextDelta):
            if self.answer is None:
                self.answer = _markdown_view()(classes="assistant")
                await self.add(self.answer)
            self.answer.append(event.text)
            await self._let_the_screen_in()
        elif isinstance(event, ev.ThinkingDelta):
            if self.thinking is None:
                self.thinking = ThinkingBlock()
                self.thinking.expanded = self.expanded
                await self.add(self.thinking)
            self.thinking.append(event.text)
        elif isinstance(event, ev.StreamRestarted):
            partial = [w for w in (self.answer, self.thinking) if w is not None]
            await self.end_answer()
            for widget in partial:
                await widget.remove()
        elif isinstance(event, ev.AssistantMessage):
            await self.end_answer()
        elif isinstance(event, ev.ToolStarted):
            await self.end_answer()
            panel = ToolPanel(event.tool_use_id, event.name, event.input, event.view)
            panel.body.expanded = self.expanded
            self.tools[event.tool_use_id] = panel
            await self.add(panel)
        elif isinstance(event, ev.ToolOutput):
            panel = self.tools.get(event.tool_use_id)
            if panel is not None:
                panel.write_output(event.text)
        elif isinstance(event, ev.ToolFinished):
            panel = self.tools.pop(event.tool_use_id, None)
            if panel is not None:
                panel.finish(event.content, event.is_error)
        elif isinstance(event, ev.Status):
            await self.add(Notice(event.message))
        elif isinstance(event, ev.ErrorEvent):
            await self.end_answer()
            await self.add(ErrorMessage(event.message))
        else:
            return False
        return True

    async def _let_the_screen_in(self) -> None:
        """Yield to the event loop if the stream has kept it for a while.

        The stream's socket often has the next events buffered, so reading them never waits
        and nothing else runs: every ``YIELD_EVERY`` seconds keys and a frame get their turn.
        """
        now = time.monotonic()
        if now - self._yielded >= YIELD_EVERY:
            self._yielded = now
            await asyncio.sleep(0)

    async def show_history(self, events: Iterable[Event]) -> None:
        """Show a resumed session's live path: its newest entries, enough to fill the screen; the rest on PageUp."""
        await self.mount_all(self._resumed_entries(events))
        self.scroll_end(animate=False, immediate=True)

    def _resumed_entries(self, events: Iterable[Event]) -> list[Widget]:
        """The newest entries of a live path, enough to fill the screen; the rest are built on scrolling up."""
        entries = history_entries(events)
        widgets = self._newest(entries, RESUME_ENTRIES, RESUME_SCREENS)
        self._earlier = entries[: len(entries) - len(widgets)]
        if self._earlier:
            widgets.insert(0, Notice(self._earlier_note(), classes="pruned earlier"))
        return widgets

    def code_languages(self) -> list[str]:
        """The languages of the code blocks shown, each once."""
        return list(dict.fromkeys(name for view in self._markdown_views() for name in view.code_languages()))

    def highlight_history(self) -> None:
        """Colour the code of a resumed conversation, drawn plain at first.

        A view a frame, the newest (on screen) first, and only while the user is not typing or scrolling:
        each is rendered again, and keys pressed meanwhile are not kept waiting for that.
        """
        self._colour(self._markdown_views())

    def _markdown_views(self) -> list[MarkdownView]:
        # By type name: before the first answer the module is not imported, and there are none.
        return list(self.query_children("MarkdownView"))  # type: ignore[arg-type]

    def _colour(self, views: list[MarkdownView]) -> None:
        """Colour ``views`` (drawn plain) in the background: the last first."""
        self._to_colour.extend(views)
        if not self._colouring:
            self._colouring = True
            self._colour_next()

    def _colour_next(self) -> None:
        if self._to_colour and (wait := quiet_in()) > 0:
            self.set_timer(wait, self._colour_next)  # not while the user types or scrolls
            return
        while self._to_colour:
            view = self._to_colour.pop()
            if view.is_attached and view.highlight():
                self.call_after_refresh(self._colour_next)
                return
        self._colouring = False
        self.history_coloured.set()

    def _newest(self, builders: list[Callable[[], Widget]], most: int, screens: float) -> list[Widget]:
        """The newest of ``builders`` built: at most ``most``, and no more than fill about ``screens`` screens.

        Their code is drawn plain, coloured a moment later (``_colour``): plain, they cost ~30% less to draw,
        and the screen they are waited for comes up sooner.
        """
        width = max(self.app.size.width - 4, 20)
        rows_wanted = screens * self.app.size.height
        widgets: list[Widget] = []
        rows = 0
        for build in reversed(builders[-most:]):
            widgets.append(build())
            if isinstance(widgets[-1], _markdown_view()):
                widgets[-1].highlight_code = False
            rows += _estimated_rows(widgets[-1], width)
            if rows >= rows_wanted:
                break
        widgets.reverse()
        return widgets

    def _earlier_note(self) -> str:
        return f"… {len(self._earlier):,} earlier entries (scroll up or PageUp for more)"

    async def page(self, direction: int) -> None:
        """Scroll a page up (-1) or down (1); at the top of a resumed session, show earlier entries first."""
        if direction < 0 and self.scroll_y == 0 and self._earlier:
            await self.show_earlier(then_page_up=True)
            return
        # Not animated: a page at once, as terminals scroll, and nothing left running on the next key.
        if direction < 0:
            self.scroll_page_up(animate=False)
        else:
            self.scroll_page_down(animate=False)

    async def show_earlier(self, *, then_page_up: bool = False) -> None:
        """Build the next older entries (of a resumed session, or pruned) above the ones shown.

        What is on screen stays where it is: once they are laid out, the view moves down by what was
        added above it (and then up a page, for PageUp).
        """
        if self._showing_earlier or not self._earlier:
            return
        self._showing_earlier = True
        note = self.query_children(".earlier").first(Notice)
        batch = self._newest(self._earlier, EARLIER_BATCH, EARLIER_SCREENS)
        del self._earlier[len(self._earlier) - len(batch) :]
        shown = [child for child in self.children if child is not note]
        kept = shown[0] if shown else None
        kept_at = kept.virtual_region.y - self.scroll_y if kept is not None else 0
        await self.mount_all(batch, after=note)
        self._colour([widget for widget in batch if isinstance(widget, _markdown_view())])
        if self._earlier:
            note.update(self._earlier_note())
        else:
            await note.remove()
        # Not awaited: this may run in the transcript's own task, which is the one that lays it out.
        self.call_after_refresh(self._keep_in_view, kept, kept_at, then_page_up)

    def _keep_in_view(self, kept: Widget | None, kept_at: int, page_up: bool) -> None:
        if kept is not None:
            self.scroll_to(y=kept.virtual_region.y - kept_at, animate=False, immediate=True)
        if page_up:
            self.scroll_page_up(animate=False)
        self._showing_earlier = False


def _markdown_view() -> type[MarkdownView]:
    """The streaming Markdown widget, imported when first needed.

    Its imports (markdown-it, Pygments, Rich's Markdown: ~20 ms) would otherwise delay a new session's
    first screen, which shows no Markdown; the app imports them on a thread once the prompt takes input.
    """
    from tui.streaming_markdown import MarkdownView

    return MarkdownView


def rebuilder(widget: Widget) -> Callable[[], Widget] | None:
    """What it takes to build ``widget`` again (its text, not its rendered lines); None for what is not kept."""
    classes = " ".join(widget.classes)
    if isinstance(widget, _markdown_view()):
        return partial(type(widget), widget.source, classes=classes)
    if isinstance(widget, ThinkingBlock):
        return partial(_thinking, widget.text.plain)
    if isinstance(widget, ToolPanel):
        return widget.rebuilder()
    if isinstance(widget, DiffView):
        return partial(DiffView, widget.diff)
    if isinstance(widget, (UserMessage, Notice, ErrorMessage)) and not widget.has_class("earlier"):
        return partial(type(widget), widget.content, classes=classes)
    return None


def forget_removed_widgets() -> None:
    """Let removed widgets' rendered lines be freed.

    Textual (8.2) caches ``StylesCache.get_inner_outer`` with ``lru_cache`` on the instance method, so
    its keys hold up to 1,024 widgets' style caches, each with every line it drew: without this, a
    pruned transcript keeps the lines of a thousand removed entries. The cache holds pairs of colours,
    made again on demand.
    """
    StylesCache.get_inner_outer.cache_clear()


def _estimated_rows(widget: Widget, width: int) -> int:
    """Rows ``widget`` will take at ``width``, from its text and without rendering it (a guess, low rather than high)."""
    if isinstance(widget, _markdown_view()):
        return sum(1 + len(line) // width for line in widget.source.splitlines())
    return 3  # a prompt, a notice, a tool call's title: at least this


def history_entries(events: Iterable[Event]) -> list[Any]:
    """One widget factory per entry of a live path (factories: only the ones shown are built)."""
    entries: list[Any] = []
    panels: dict[str, ToolPanel] = {}
    for event in events:
        payload = event.payload
        kind = event.type
        if kind == EventType.USER:
            text = content_text(payload.get("content")).strip()
            if text and not _is_tool_results(payload.get("content")):
                entries.append(lambda text=text: UserMessage(text))
        elif kind == EventType.ASSISTANT:
            message = payload.get("message")
            blocks = message.get("content") if isinstance(message, dict) else None
            for block in blocks if isinstance(blocks, list) else []:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and str(block.get("text", "")).strip():
                    entries.append(lambda text=block["text"]: _markdown_view()(text, classes="assistant"))
                elif block.get("type") == "thinking" and block.get("thinking"):
                    entries.append(lambda text=block["thinking"]: _thinking(text))
                elif block.get("type") == "tool_use":
                    panel_args = (str(block.get("id")), str(block.get("name", "tool")), block.get("input") or {})
                    entries.append(_PanelEntry(panel_args, panels))
        elif kind == EventType.TOOL_RESULT:
            tool_use_id = str(payload.get("tool_use_id"))
            for entry in reversed(entries):
                if isinstance(entry, _PanelEntry) and entry.args[0] == tool_use_id:
                    entry.result = (str(payload.get("content") or ""), bool(payload.get("is_error")))
                    break
        elif kind == EventType.COMPACTION:
            entries.append(lambda: Notice("The conversation was compacted; it continues from a summary."))
        elif kind == EventType.INTERRUPTION:
            entries.append(partial(Notice, f"Interrupted: {payload.get('reason', 'unknown reason')}"))
        elif kind == EventType.SANDBOX and payload.get("event") in ("lost", "reprovisioned"):
            entries.append(partial(Notice, f"Sandbox {payload.get('event')}."))
    return entries


def session_usage(events: Iterable[Event]) -> tuple[int, float | None]:
    """Tokens (input, output and cache) and cost of every answer in ``events``; cost None if any is unknown."""
    tokens, cost = 0, 0.0
    known = True
    for event in events:
        if event.type != EventType.ASSISTANT:
            continue
        message = event.payload.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict):
            tokens += sum(
                value
                for key, value in usage.items()
                if key.endswith("tokens") and isinstance(value, int) and not isinstance(value, bool)
            )
        price = event.payload.get("cost_usd")
        if isinstance(price, (int, float)):
            cost += price
        else:
            known = False
    return tokens, cost if known else None


class _PanelEntry:
    """A tool call of the history, and its result once the log has shown it."""

    def __init__(self, args: tuple[str, str, dict[str, Any]], panels: dict[str, ToolPanel]) -> None:
        self.args = args
        self.result: tuple[str, bool] | None = None

    def __call__(self) -> ToolPanel:
        panel = ToolPanel(*self.args)
        if self.result is not None:
            content, is_error = self.result
            panel.finish(content, is_error, timed=False)
        return panel


def _thinking(text: str) -> ThinkingBlock:
    block = ThinkingBlock()
    block.text.append(text)
    return block


def _is_tool_results(content: Any) -> bool:
    return isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
