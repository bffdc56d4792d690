"""Assistant text as Markdown that streams in: finished blocks rendered once, only the last one again.

A block (paragraph, list, code block, heading, table…) is finished once the next
one has started; its lines are kept. Each new piece of text re-parses and re-renders
only the block still growing, so the cost of a delta does not grow with the answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.util import ClassNotFound
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markdown import CodeBlock, Markdown
from rich.syntax import Syntax, SyntaxTheme
from textual.strip import Strip

from agent.background_import import wait_until_quiet
from tui.rendered import BLANK_LINE, RenderedLines, render_strips, trim_blank

CODE_THEME = "ansi_dark"
"""Code blocks in the terminal's own colours, so they read in light and dark themes."""


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    """The parser Rich's Markdown uses, built once (building one costs milliseconds)."""
    return MarkdownIt().enable("strikethrough").enable("table")


def split_blocks(text: str) -> list[tuple[int, list[Token]]]:
    """``text``'s top-level Markdown blocks: the line each starts on, and its tokens."""
    blocks: list[tuple[int, list[Token]]] = []
    for token in _parser().parse(text):
        if token.level == 0 and token.nesting >= 0 and token.map:
            blocks.append((token.map[0], []))
        if blocks:
            blocks[-1][1].append(token)
    return blocks


@lru_cache(maxsize=64)
def _lexer(name: str) -> Lexer:
    """A Pygments lexer by name, looked up once (the lookup costs more than highlighting a short block)."""
    try:
        return get_lexer_by_name(name)
    except ClassNotFound:
        return TextLexer()


_FENCE_LANGUAGE = re.compile(r"^ {0,3}(?:`{3,}(?!`)|~{3,}(?!~))[ \t]*([^\s`{]+)", re.MULTILINE)
"""The language named on a fenced code block's opening line."""


def code_languages(markdown: str) -> list[str]:
    """The languages of ``markdown``'s fenced code blocks (an opening fence's first word, in any case)."""
    return [name.lower() for name in _FENCE_LANGUAGE.findall(markdown)]


COMMON_LANGUAGES = ("python", "bash", "json", "diff", "javascript", "typescript", "toml", "yaml")
"""Lexers made ready before the first answer: each compiles its patterns on first use (10–60 ms)."""


def warm_highlighting(languages: Iterable[str] = ()) -> None:
    """Build the lexers of ``languages`` and those answers use most, so no code block drawn later pays for them."""
    for name in dict.fromkeys([*languages, *COMMON_LANGUAGES]):
        wait_until_quiet()  # each costs 10-60 ms of CPU: not while the user types or scrolls
        _lexer(name)
    _code_theme()


@lru_cache(maxsize=1)
def _code_theme() -> SyntaxTheme:
    return Syntax.get_theme(CODE_THEME)


class _CodeBlock(CodeBlock):
    """Rich's code block, with the lexer and theme looked up once per process, not once per block."""

    highlight = True

    @classmethod
    def create(cls, markdown: Markdown, token: Token) -> CodeBlock:
        block = super().create(markdown, token)
        block.highlight = getattr(markdown, "highlight_code", True)  # type: ignore[attr-defined]
        return block

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        code = str(self.text).rstrip()
        # Unhighlighted, a block takes the same room: colours come later without moving anything.
        lexer = _lexer(self.lexer_name) if self.highlight else TextLexer()
        yield Syntax(code, lexer, theme=_code_theme(), word_wrap=True, padding=1)


class BlockMarkdown(Markdown):
    """Rich's Markdown, from tokens already parsed or with the shared parser."""

    elements: Any = {**Markdown.elements, "fence": _CodeBlock, "code_block": _CodeBlock}

    def __init__(self, markup: str, tokens: list[Token] | None = None, *, highlight_code: bool = True) -> None:
        # Not Markdown.__init__: it builds a new parser each time.
        self.highlight_code = highlight_code
        self.markup = markup
        self.parsed = tokens if tokens is not None else _parser().parse(markup)
        self.code_theme = CODE_THEME
        self.justify = None
        self.style = "none"
        self.hyperlinks = True
        self.inline_code_lexer = None
        self.inline_code_theme = CODE_THEME


def _shifted(tokens: list[Token], first_line: int) -> list[Token]:
    """``tokens`` of a block that starts on line ``first_line``, as if parsed from that line on (Rich reads no line maps, but keep them true)."""
    if first_line:
        for token in tokens:
            if token.map:
                token.map = [token.map[0] - first_line, token.map[1] - first_line]
    return tokens


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
        self._tokens: list[list[Token] | None] = []
        self._tail = ""
        self._tail_may_end = False
        self._rendered: list[list[Strip]] = []
        self._rendered_width = -1
        self.highlight_code = True
        """Colour code blocks; False draws them plain (a resumed screen comes up sooner), see ``highlight``."""
        if source:
            self.append(source)

    @property
    def source(self) -> str:
        """The Markdown received so far."""
        return "".join(self._blocks) + self._tail

    def append(self, text: str) -> None:
        """Add a piece of text to the end."""
        # A block ends where another starts, which a blank line reveals: the tail is parsed again only
        # if one arrived, and only when the lines are next built (once a frame, not once a piece).
        if not self._tail_may_end and "\n\n" in self._tail[-1:] + text:
            self._tail_may_end = True
        self._tail += text
        self.invalidate()

    def code_languages(self) -> list[str]:
        """The languages of this Markdown's fenced code blocks."""
        return code_languages(self.source)

    def highlight(self) -> bool:
        """Draw code blocks in colour from now on (they keep their place: only their colours change).

        Returns whether the view is drawn again (not if it has no code in a named language).
        """
        if self.highlight_code:
            return False
        self.highlight_code = True
        if not self.code_languages():
            return False  # unnamed or indented code is drawn plain either way
        self._rendered_width = -1  # finished blocks are drawn again, once
        self.invalidate()
        return True

    def _split_finished(self) -> list[Token] | None:
        """Move the blocks of the tail that are followed by another block into the finished ones.

        Returns the tail's tokens when the tail is what was parsed (it then need not be parsed again
        to be drawn), else None.
        """
        self._tail_may_end = False
        blocks = split_blocks(self._tail)
        if len(blocks) < 2:
            return blocks[0][1] if blocks and blocks[0][0] == 0 else None
        lines = self._tail.splitlines(keepends=True)
        for (first, tokens), (after, _) in zip(blocks, blocks[1:], strict=False):
            self._blocks.append("".join(lines[first:after]))
            self._tokens.append(tokens)
        self._tail = "".join(lines[blocks[-1][0] :])
        return _shifted(blocks[-1][1], blocks[-1][0])

    def build(self, width: int) -> list[Strip]:
        """Finished blocks from the cache (rendered at most once per width), the tail rendered now."""
        tail_tokens = self._split_finished() if self._tail_may_end else None
        if width != self._rendered_width:
            self._rendered = []
            self._rendered_width = width
        console = self.app.console
        for index in range(len(self._rendered), len(self._blocks)):
            self._rendered.append(
                self._render(console, self._blocks[index], width, self._tokens[index], self.highlight_code)
            )
            self._tokens[index] = None  # the parse is only needed once; a new width parses again
        lines: list[Strip] = []
        for block_lines in self._rendered:
            if block_lines:
                if lines:
                    lines.append(BLANK_LINE)
                lines.extend(block_lines)
        tail = self._render(console, self._tail, width, tail_tokens, self.highlight_code) if self._tail.strip() else []
        if tail and lines:
            lines.append(BLANK_LINE)
        return lines + tail

    @staticmethod
    def _render(
        console: Console, text: str, width: int, tokens: list[Token] | None = None, highlight_code: bool = True
    ) -> list[Strip]:
        return trim_blank(render_strips(console, BlockMarkdown(text, tokens, highlight_code=highlight_code), width))
