"""The tools every session offers, in the order the model sees them."""

from __future__ import annotations

from agent.tools.base import Tool
from agent.tools.bash import BashTool
from agent.tools.files import EditTool, ReadTool, WriteTool
from agent.tools.plan import ExitPlanModeTool
from agent.tools.search import GlobTool, GrepTool
from agent.tools.todo import TodoWriteTool


def default_tools() -> list[Tool]:
    """A fresh instance of every tool (TodoWrite keeps the session's list)."""
    return [
        BashTool(),
        ReadTool(),
        WriteTool(),
        EditTool(),
        GlobTool(),
        GrepTool(),
        TodoWriteTool(),
        ExitPlanModeTool(),
    ]
