"""``/diff``, ``/apply`` and ``/rewind`` in the TUI, driven by Pilot as a person would."""

from __future__ import annotations

from pathlib import Path

from agent.harness import HarnessOptions
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tui import screen_text, type_prompt, until
from tui.app import TetherApp
from tui.rewind import RewindScreen
from tui.widgets import DiffView, Notice, PromptArea


async def test_diff_and_apply_in_a_copy_workspace(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    (tui_env / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    fake_api.script(
        reply(tool_use("Bash", {"command": "sed -i 's/a + b/b + a/' calc.py && echo new > added.txt"})),
        reply(text("changed")),
    )
    app = TetherApp(HarnessOptions(project_dir=tui_env, workspace="copy", permission_mode="bypassPermissions"))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_prompt(pilot, app, "change it")
        await app.workers.wait_for_complete()
        assert "workspace copy" in screen_text(app)
        await type_prompt(pilot, app, "/diff")
        await app.workers.wait_for_complete()
        await pilot.pause()
        diff = app.query(DiffView).last().diff
        assert "-    return a + b\n+    return b + a\n" in diff and "+new" in diff
        assert "+    return b + a" in screen_text(app)
        assert (tui_env / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
        await type_prompt(pilot, app, "/apply")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert (tui_env / "calc.py").read_text() == "def add(a, b):\n    return b + a\n"
        assert (tui_env / "added.txt").read_text() == "new\n"
        assert "2 written, 0 deleted, 0 refused" in str(app.query(Notice).last().render())
        assert len(fake_api.message_requests) == 2, "a workspace command went to the model"
        await app.action_quit()


async def test_rewind_lists_prompts_shows_changes_and_restores_files(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    async with app.run_test(size=(120, 40)) as pilot:
        for n in (1, 2, 3):
            fake_api.script(reply(tool_use("Bash", {"command": f"echo v{n} > shared.txt"})), reply(text(f"answer {n}")))
            await type_prompt(pilot, app, f"prompt {n}")
            await app.workers.wait_for_complete()
        assert (tui_env / "shared.txt").read_text() == "v3\n"
        area = app.query_one("#prompt", PromptArea)
        area.focus()
        await pilot.press(*"/rewind", "enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RewindScreen)
        shown = screen_text(app)
        assert "3. prompt 3" in shown and "1. prompt 1" in shown
        # Newest first: the list starts on prompt 3, one down is prompt 2.
        await pilot.press("down", "enter")
        await until(pilot, lambda: "restore shared.txt" in screen_text(app), attempts=500)
        await pilot.press("enter")  # conversation and code
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert (tui_env / "shared.txt").read_text() == "v1\n"
        assert area.text == "prompt 2", "the rewound prompt did not come back to the prompt box"
        assert "Rewound to before prompt 2" in screen_text(app)
        # The next prompt continues from prompt 1's answer.
        fake_api.script(reply(text("from the rewound point")))
        area.text = ""
        await type_prompt(pilot, app, "again")
        await app.workers.wait_for_complete()
        sent = str(fake_api.message_requests[-1].body["messages"])
        assert "answer 1" in sent and "prompt 2" not in sent and "answer 3" not in sent
        await app.action_quit()
