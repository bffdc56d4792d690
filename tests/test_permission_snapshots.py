"""Snapshots of the permission dialog: a Bash command with its description, and an Edit as a diff."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Static

from agent.events import PermissionRequest
from agent.tools.catalog import default_tools
from tui.permission import PermissionScreen

TOOLS = {tool.name: tool for tool in default_tools()}

CALLS = {
    "bash": ("Bash", {"command": "npm test -- --watch", "description": "Run the test suite in watch mode"}),
    "edit": (
        "Edit",
        {
            "file_path": "/workspace/src/app.py",
            "old_string": "def greet(name):\n    return 'hi ' + name\n",
            "new_string": "def greet(name: str) -> str:\n    return f'hello {name}'\n",
        },
    ),
}


class DialogApp(App[None]):
    """A screen with some text behind the dialog, as the transcript would be."""

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        super().__init__()
        self.call = (name, args)

    def compose(self) -> ComposeResult:
        yield Static("the transcript behind the dialog")

    def on_mount(self) -> None:
        name, args = self.call
        tool = TOOLS[name]
        future = asyncio.get_running_loop().create_future()
        request = PermissionRequest(
            "toolu_1",
            name,
            args,
            future,
            view=tool.call_view(args),
            suggested_rule=tool.suggested_rule(args, "/workspace"),
        )
        self.push_screen(PermissionScreen(request))


@pytest.mark.parametrize("size", [(120, 34), (80, 24)], ids=["120x34", "80x24"])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_permission_dialog(snap_compare, call: str, size: tuple[int, int]) -> None:
    assert snap_compare(DialogApp(*CALLS[call]), terminal_size=size)
