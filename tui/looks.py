"""Rich styles of the transcript that read in light and dark themes alike.

Rich's defaults give inline code a black background: a black box in a light terminal.
"""

from __future__ import annotations

from rich.console import Console
from rich.style import Style
from rich.theme import Theme

MARKDOWN_THEME = Theme(
    {
        "markdown.code": Style(bold=True, color="cyan"),
        "markdown.code_block": Style(color="cyan"),
    }
)
"""Markdown styles without hard-coded backgrounds (the theme's own background shows through)."""


def use_looks(console: Console) -> None:
    """Render with tether's styles on ``console`` (the app's)."""
    console.push_theme(MARKDOWN_THEME)
