"""A Write over an existing file is shown as a diff against what the file holds in the sandbox, in the
permission dialog and in the tool panel; a new file as added lines. Pilot, embedded host, fake API."""

from __future__ import annotations

from pathlib import Path

from agent import events as ev
from agent.harness import HarnessOptions
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tui import screen_text, type_prompt
from tests.test_tui_permissions import Watched
from tui.permission import PermissionScreen
from tui.tool_panels import ToolPanel

OLD = "alpha\nbravo\ncharlie\ndelta\necho\n"
NEW = "alpha\nbravo\nCHARLIE\ndelta\necho\n"


async def test_a_write_over_a_file_is_shown_as_a_diff_in_the_dialog_and_the_panel(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    (tui_env / "words.txt").write_text(OLD)
    fake_api.script(
        reply(tool_use("Read", {"file_path": "words.txt"})),
        reply(tool_use("Write", {"file_path": "words.txt", "content": NEW})),
        reply(text("rewrote it")),
    )
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="default"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "shout the third word")
        await watched.screen(PermissionScreen)
        await pilot.pause()
        request = next(e for e in watched.events if isinstance(e, ev.PermissionRequest))
        assert request.view is not None and request.view.kind == "diff"
        assert "-charlie\n+CHARLIE\n" in request.view.text and "+alpha" not in request.view.text
        dialog = screen_text(app)
        assert "-charlie" in dialog and "+CHARLIE" in dialog and "+alpha" not in dialog, dialog
        await pilot.press("y")
        await watched.event(lambda e: isinstance(e, ev.TurnFinished))
        await app.workers.wait_for_complete()
        await pilot.pause()
        panel = [p for p in app.query(ToolPanel) if p.tool_name == "Write"][0]
        shown = panel.body.text.plain
        assert "-charlie" in shown and "+CHARLIE" in shown and " alpha" in shown and "+alpha" not in shown, shown
        assert (tui_env / "words.txt").read_text() == NEW
        await app.action_quit()


async def test_a_write_of_a_new_file_shows_every_line_added(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    fake_api.script(reply(tool_use("Write", {"file_path": "fresh.txt", "content": "one\ntwo\n"})), reply(text("ok")))
    watched = Watched(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    app = watched.app
    async with app.run_test(size=(120, 40), message_hook=watched.hook) as pilot:
        await type_prompt(pilot, app, "make a file")
        await watched.event(lambda e: isinstance(e, ev.TurnFinished))
        await app.workers.wait_for_complete()
        await pilot.pause()
        (panel,) = app.query(ToolPanel)
        assert panel.body.text.plain.splitlines()[-2:] == ["+one", "+two"]
        assert (tui_env / "fresh.txt").read_text() == "one\ntwo\n"
        await app.action_quit()
