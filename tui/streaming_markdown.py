"""Assistant text as Markdown that streams in: finished blocks rendered once, only the last one again.

A block (paragraph, list, code block, heading, table…) is finished once the next
one has started; its lines are kept. Each new piece of text re-parses and re-renders
only the block still growing, so the cost of a delta does not grow with the answer.
"""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt
from rich.markdown import Markdown
from textual.strip import Strip

from tui.rendered import BLANK_LINE, RenderedLines, render_strips, trim_blank

CODE_THEME = "ansi_dark"
"""Code blocks in the terminal's own colours, so they read in light and dark themes."""


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    """The parser Rich's Markdown uses, for finding where blocks start."""
    return MarkdownIt().enable("strikethrough").enable("table")


def block_starts(text: str) -> list[int]:
    """The line numbers where ``text``'s top-level Markdown blocks start."""
    return [token.map[0] for token in _parser().parse(text) if token.level == 0 and token.nesting >= 0 and token.map]


class MarkdownView(RenderedLines):
    """Markdown that can grow: ``append`` a piece, and only the unfinished block is rendered again."""

    DEFAULT_CSS = """
    MarkdownView {
        height: auto;
    }
    """

    def __init__(self, source: str = "", *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self._blocks: list[str] = []
        self._tail = ""
        self._rendered: list[list[Strip]] = []
        self._rendered_width = -1
        if source:
            self.append(source)

    @property
    def source(self) -> str:
        """The Markdown received so far."""
        return "".join(self._blocks) + self._tail

    def append(self, text: str) -> None:
        """Add a piece of text to the end."""
        self._tail += text
        if "\n" in text:
            self._split_finished()
        self.invalidate()

    def _split_finished(self) -> None:
        """Move the blocks of the tail that are followed by another block into the finished ones."""
        starts = block_starts(self._tail)
        if len(starts) < 2:
            return
        lines = self._tail.splitlines(keepends=True)
        for first, after in zip(starts, starts[1:], strict=False):
            self._blocks.append("".join(lines[first:after]))
        self._tail = "".join(lines[starts[-1] :])

    def build(self, width: int) -> list[Strip]:
        """Finished blocks from the cache (rendered at most once per width), the tail rendered now."""
        if width != self._rendered_width:
            self._rendered = []
            self._rendered_width = width
        console = self.app.console
        for block in self._blocks[len(self._rendered) :]:
            self._rendered.append(self._render(console, block, width))
        lines: list[Strip] = []
        for block_lines in self._rendered:
            if block_lines:
                if lines:
                    lines.append(BLANK_LINE)
                lines.extend(block_lines)
        tail = self._render(console, self._tail, width) if self._tail.strip() else []
        if tail and lines:
            lines.append(BLANK_LINE)
        return lines + tail

    @staticmethod
    def _render(console, text: str, width: int) -> list[Strip]:  # type: ignore[no-untyped-def]
        return trim_blank(render_strips(console, Markdown(text, code_theme=CODE_THEME), width))
