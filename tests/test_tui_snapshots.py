"""Screenshots of the transcript (SVGs under tests/__snapshots__/): mid-stream, tool panels, an Edit diff, a resumed session.

Update after a deliberate change of the looks: pytest tests/test_tui_snapshots.py --snapshot-update,
then look at the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import events as ev
from bench.markdown_answer import markdown_answer
from tests.fixtures.transcript_screen import TranscriptScreenApp, conversation_log, tool_call, user
from tui import tool_panels
from tui.transcript import Transcript

SIZES = [(120, 34), (80, 24)]


@pytest.fixture(autouse=True)
def stopped_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tool call takes 1.5 s."""
    ticks = iter(range(0, 10**6, 1))
    monkeypatch.setattr(tool_panels, "clock", lambda: next(ticks) * 1.5)


@pytest.mark.parametrize("size", SIZES)
def test_mid_stream(snap_compare, size: tuple[int, int]) -> None:
    async def scenario(transcript: Transcript) -> None:
        await user(transcript, "Explain the transcript")
        for i in range(0, 1900, 8):
            await transcript.show(ev.TextDelta(markdown_answer()[i : i + 8]))

    assert snap_compare(
        app := TranscriptScreenApp(scenario), terminal_size=size, run_before=lambda pilot: app.play(pilot)
    )


@pytest.mark.parametrize("size", SIZES)
def test_tool_panels_with_output_and_folded(snap_compare, size: tuple[int, int]) -> None:
    async def scenario(transcript: Transcript) -> None:
        await user(transcript, "run the checks")
        listing = "README.md\nsetup.py\nsrc\ntests\n"
        await tool_call(transcript, "t1", "Bash", {"command": "ls", "description": "List files"}, listing, listing)
        count = "".join(f"{n}\n" for n in range(1, 41))
        await tool_call(transcript, "t2", "Bash", {"command": "seq 1 40"}, count, count)
        await tool_call(
            transcript,
            "t3",
            "Bash",
            {"command": "false || echo broken; exit 2"},
            "broken\n",
            "broken\nExit code 2",
            True,
        )

    assert snap_compare(
        app := TranscriptScreenApp(scenario), terminal_size=size, run_before=lambda pilot: app.play(pilot)
    )


@pytest.mark.parametrize("size", SIZES)
def test_edit_diff_and_checklist(snap_compare, size: tuple[int, int]) -> None:
    async def scenario(transcript: Transcript) -> None:
        await user(transcript, "rename the helper")
        old = "def helper(x):\n    return x + 1\n\n\nprint(helper(2))\n"
        new = "def increment(x):\n    return x + 1\n\n\nprint(increment(2))\n"
        args = {"file_path": "/workspace/app.py", "old_string": old, "new_string": new}
        await tool_call(transcript, "t1", "Edit", args, None, "The file /workspace/app.py has been updated.")
        todos = [
            {"content": "Rename the helper", "status": "completed", "activeForm": "Renaming"},
            {"content": "Run the tests", "status": "in_progress", "activeForm": "Running the tests"},
            {"content": "Update the docs", "status": "pending", "activeForm": "Updating the docs"},
        ]
        await tool_call(transcript, "t2", "TodoWrite", {"todos": todos}, None, "Todos updated.")

    assert snap_compare(
        app := TranscriptScreenApp(scenario), terminal_size=size, run_before=lambda pilot: app.play(pilot)
    )


@pytest.mark.parametrize("size", SIZES)
def test_resumed_session(snap_compare, size: tuple[int, int], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    log = conversation_log(tmp_path / "home", project)

    async def scenario(transcript: Transcript) -> None:
        await transcript.show_history(log.live_path())

    assert snap_compare(
        app := TranscriptScreenApp(scenario), terminal_size=size, run_before=lambda pilot: app.play(pilot)
    )
