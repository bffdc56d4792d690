"""Widgets drawn from lines rendered once per width, not re-rendered on every refresh.

A transcript holds thousands of lines; Textual's ``Static`` and ``Markdown`` re-render
their whole content whenever it changes. These widgets keep the rendered lines
(Textual ``Strip``\\ s) and render again only what changed or when the width does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console, RenderableType
from rich.segment import Segment
from rich.style import Style
from textual.cache import FIFOCache
from textual.selection import Selection
from textual.strip import Strip
from textual.widget import Widget

_STRIP_CACHES = {
    "_divide_cache": 4,
    "_crop_cache": 16,
    "_style_cache": 16,
    "_filter_cache": 4,
    "_line_length_cache": 4,
    "_crop_extend_cache": 4,
    "_offsets_cache": 4,
}
"""The caches every ``Strip`` makes up front, and their sizes (as ``Strip.__init__`` has them)."""


class LeanStrip(Strip):
    """A ``Strip`` that makes its caches the first time it is drawn, not when it is made.

    A transcript keeps tens of thousands of rendered lines and draws only the few on
    screen; a plain ``Strip`` carries seven caches from birth (about 1 KB a line).
    """

    __slots__ = ()

    def __init__(self, segments: Iterable[Segment], cell_length: int | None = None) -> None:
        self._segments = list(segments)
        self._cell_length = cell_length
        self._render_cache = None
        self._link_ids = None
        self._cell_count = None

    def __getattr__(self, name: str) -> Any:
        size = _STRIP_CACHES.get(name)
        if size is None:
            raise AttributeError(name)
        cache: FIFOCache[Any, Any] = FIFOCache(size)
        setattr(self, name, cache)
        return cache


def render_strips(console: Console, renderable: RenderableType, width: int) -> list[Strip]:
    """``renderable`` rendered at ``width`` cells, one Strip per line."""
    options = console.options.update(width=width, min_width=width, max_width=width, highlight=False)
    lines = console.render_lines(renderable, options, pad=False)
    return [LeanStrip(line) for line in lines]


def trim_blank(strips: list[Strip]) -> list[Strip]:
    """``strips`` without the blank lines that lead or trail them."""
    start, end = 0, len(strips)
    while start < end and not strips[start].text.strip():
        start += 1
    while end > start and not strips[end - 1].text.strip():
        end -= 1
    return strips[start:end]


BLANK_LINE = Strip([Segment("")])
"""An empty line, between blocks."""


class RenderedLines(Widget):
    """A widget whose content is a list of lines, built by ``build`` and kept until ``invalidate``."""

    DEFAULT_CSS = """
    RenderedLines {
        height: auto;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._lines: list[Strip] = []
        self._lines_width = -1
        self._refresh_pending = False

    def build(self, width: int) -> list[Strip]:
        """The content rendered at ``width`` cells."""
        raise NotImplementedError

    def lines(self, width: int) -> list[Strip]:
        """The content's lines at ``width``, built only if the width changed or they were invalidated."""
        if width != self._lines_width:
            self._lines = self.build(width) if width > 0 else []
            self._lines_width = width
            self._refresh_pending = False
        return self._lines

    def invalidate(self) -> None:
        """The content changed: build its lines again at the next paint."""
        if self._lines_width != -1 or not self._refresh_pending:
            # Once is enough until the next paint: a stream invalidates thousands of times between two.
            self._lines_width = -1
            self._refresh_pending = True
            self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        """As many rows as there are lines."""
        return len(self.lines(width))

    def render_line(self, y: int) -> Strip:
        """Line ``y`` of the content, in the widget's style, with the text selection shown."""
        width = self.content_size.width
        lines = self.lines(width)
        line = lines[y] if 0 <= y < len(lines) else BLANK_LINE
        # From a copy: the kept line must not keep (in its caches) every form it was ever drawn in.
        line = LeanStrip(line, line.cell_length).crop_extend(0, width, None).apply_style(self.rich_style)
        selection = self.text_selection
        if selection is not None and (span := selection.get_span(y)) is not None:
            start, end = span
            end = width if end == -1 else min(end, width)
            if start < end:
                # Its background only: the component's colour resolves to the background itself (the text would vanish).
                style = Style(bgcolor=self.screen.get_component_rich_style("screen--selection").bgcolor)
                # On top of the text's own styles (a code span's background), as a terminal shows a selection.
                selected = Strip(Segment.apply_style(line.crop(start, end), post_style=style), end - start)
                line = Strip.join([line.crop(0, start), selected, line.crop(end, width)])
        # Offsets let a mouse drag select text here (Textual maps screen cells back to lines and columns).
        drawn = line.apply_offsets(0, y)
        return LeanStrip(drawn, drawn.cell_length)  # Textual keeps it until the widget changes

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        """The selected text, from the lines as shown (wrapped), without their trailing padding."""
        text = "\n".join(strip.text.rstrip() for strip in self.lines(self.content_size.width))
        return selection.extract(text), "\n"
