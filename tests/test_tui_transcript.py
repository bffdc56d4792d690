"""The transcript driven by Pilot: folded tool output, scrolling from the prompt, a resumed session."""

from __future__ import annotations

import asyncio
import gc
import re
from pathlib import Path

from textual._styles_cache import StylesCache
from textual.widget import Widget

from agent.harness import HarnessOptions
from bench.bench_transcript_session import write_session
from bench.markdown_answer import markdown_answer
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.tui import screen_text, type_prompt
from tui.app import TetherApp
from tui.streaming_markdown import MarkdownView
from tui.tool_panels import ToolPanel
from tui.transcript import EARLIER_BATCH, RESUME_ENTRIES, Transcript
from tui.widgets import PromptArea, UserMessage

LONG_OUTPUT = "seq 1 2500; printf 'W%.0s' $(seq 1 250); echo LONGEND"
"""2,501 lines, the last one 257 characters: folded, and wrapped when unfolded."""


async def test_long_output_folds_and_the_expand_key_unfolds_it_from_the_prompt(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    fake_api.script(
        reply(
            tool_use("Bash", {"command": LONG_OUTPUT, "description": "Count to 2500"}),
            tool_use("Bash", {"command": "echo once-only; exit 3"}),
        ),
        reply(text("Counted.")),
    )
    app = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_prompt(pilot, app, "count")
        await app.workers.wait_for_complete()
        await pilot.pause()
        long, failed = app.query(ToolPanel)
        assert long.output.splitlines()[:3] == ["1", "2", "3"] and long.output.rstrip().endswith("LONGEND")
        assert long.body.hidden_lines == 2501 - 4 - 6
        screen = screen_text(app)
        assert "Count to 2500" in screen and "exit 0 · " in screen
        assert "2,491 more lines (ctrl+o to expand)" in screen
        # A failed command: its output once, its exit code in the title.
        assert failed.has_class("error") and "Exit code 3" in failed.ending
        assert failed.body.text.plain.count("once-only") == 1
        assert screen.count("once-only") == 2  # the title's command and the output, not the output twice

        assert app.focused is app.query_one("#prompt", PromptArea)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert long.expanded and long.body.hidden_lines == 0
        assert len(long.body.lines(long.body.content_size.width)) > 2501, "the long last line is wrapped, not cut"
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert not long.expanded and "more lines" in screen_text(app)
        await app.action_quit()


async def test_page_up_and_down_scroll_the_transcript_while_the_prompt_has_focus(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    fake_api.script(reply(text(markdown_answer(6_000))))
    app = TetherApp(HarnessOptions(project_dir=tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await type_prompt(pilot, app, "long one")
        await app.workers.wait_for_complete()
        await pilot.pause()
        transcript = app.query_one(Transcript)
        prompt = app.query_one("#prompt", PromptArea)
        assert app.focused is prompt
        assert transcript.max_scroll_y > 0 and transcript.scroll_y == transcript.max_scroll_y, "anchored at the end"
        assert "LAST LINE OF THE ANSWER" in screen_text(app)
        await pilot.press("pageup")
        await pilot.pause()
        assert transcript.scroll_y < transcript.max_scroll_y
        assert "LAST LINE OF THE ANSWER" not in screen_text(app)
        await pilot.press("pagedown")
        await pilot.pause()
        assert transcript.scroll_y == transcript.max_scroll_y
        assert app.focused is prompt and prompt.text == ""
        await app.action_quit()


async def test_a_resumed_session_shows_its_conversation_and_its_tokens(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    fake_api.script(
        reply(text("Let me look."), tool_use("Bash", {"command": "echo resumed-output-42"})),
        reply(text("The answer is **42**."), usage={"input_tokens": 1000, "output_tokens": 234}),
    )
    first = TetherApp(HarnessOptions(project_dir=tui_env, permission_mode="bypassPermissions"))
    async with first.run_test(size=(120, 40)) as pilot:
        await type_prompt(pilot, first, "what is it")
        await first.workers.wait_for_complete()
        await pilot.pause()
        session_id = first.harness.session_id
        tokens_before = first.tokens
        await first.action_quit()
    assert tokens_before > 1234

    resumed = TetherApp(HarnessOptions(project_dir=tui_env, resume=session_id))
    async with resumed.run_test(size=(120, 40)) as pilot:
        await resumed.workers.wait_for_complete()
        await pilot.pause()
        assert [str(m.render()) for m in resumed.query(UserMessage)] == ["what is it"]
        assert [m.source for m in resumed.query(MarkdownView)] == ["Let me look.", "The answer is **42**."]
        (panel,) = resumed.query(ToolPanel)
        assert panel.has_class("ok") and "resumed-output-42" in panel.body.text.plain
        screen = screen_text(resumed)
        assert "resumed-output-42" in screen and "The answer is" in screen, screen[-6000:]
        assert f"{tokens_before:,} tokens" in screen
        assert not resumed.query_one("#prompt", PromptArea).disabled
        # Drawn plain first (the screen comes up sooner), in colour once the prompt takes input and the
        # lexers are built.
        await asyncio.wait_for(resumed.query_one(Transcript).history_coloured.wait(), 30)
        assert all(view.highlight_code for view in resumed.query(MarkdownView))
        await resumed.action_quit()


async def test_a_long_resumed_session_shows_its_newest_entries_and_earlier_ones_on_page_up(tui_env: Path) -> None:
    session_id = write_session(tui_env.parent / "tether-home", tui_env, 400)
    app = TetherApp(HarnessOptions(project_dir=tui_env, resume=session_id))
    async with app.run_test(size=(120, 34)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        transcript = app.query_one(Transcript)
        shown = len(transcript.children)
        # The newest entries, as many as fill the screen, and the note saying how many
        # are earlier.
        assert 2 <= shown <= RESUME_ENTRIES + 1
        assert transcript.virtual_size.height > transcript.size.height, "the screen is full"
        assert "LAST LINE OF THE ANSWER" in screen_text(app), "the newest entries, at the bottom"
        assert transcript.children[-1].source.startswith("Answer 199.")
        note, oldest_shown = transcript.children[0], transcript.children[1]
        oldest_shown_at = oldest_shown.virtual_region.y
        earlier = 500 - (shown - 1)  # 400 messages make 500 entries
        assert str(note.render()) == f"… {earlier} earlier entries (scroll up or PageUp for more)"
        # Within a screen of the top, earlier entries are built above, and what is on screen does not move.
        transcript.scroll_to(y=2, animate=False, immediate=True)
        await pilot.pause()
        await pilot.pause()
        added = len(transcript.children) - shown
        assert 0 < added <= EARLIER_BATCH
        assert oldest_shown.virtual_region.y - transcript.scroll_y == oldest_shown_at - 2
        assert f"… {earlier - added} earlier entries" in str(note.render())
        # Paging up, more are built before the top is reached: every PageUp shows something new, and the
        # note is never reached.
        for _ in range(6):
            before = screen_text(app)
            await pilot.press("pageup")
            await pilot.pause()
            assert screen_text(app) != before
            assert "earlier entries" not in screen_text(app)
        assert len(transcript.children) > shown + added
        # Scrolled to the top of what was built (as the mouse wheel does), more are built.
        built = len(transcript.children)
        transcript.scroll_to(y=0, animate=False, immediate=True)
        await pilot.pause()
        await pilot.pause()
        assert len(transcript.children) > built
        assert app.focused is app.query_one("#prompt", PromptArea)
        await app.action_quit()


def test_lean_strips_draw_like_strips_and_make_their_caches_only_when_drawn() -> None:
    from rich.segment import Segment
    from rich.style import Style
    from textual.strip import Strip

    from tui.rendered import _STRIP_CACHES, LeanStrip

    segments = [Segment("hello ", Style(bold=True)), Segment("wörld", Style(color="red"))]
    lean, plain = LeanStrip(segments), Strip(segments)
    assert set(_STRIP_CACHES) <= set(Strip.__slots__), "Strip's caches changed: update _STRIP_CACHES"
    style = Style(bgcolor="blue")
    for width in (4, 11, 20):
        assert list(lean.crop_extend(0, width, None).apply_style(style)) == list(
            plain.crop_extend(0, width, None).apply_style(style)
        )
    assert lean.text == plain.text and lean.cell_length == plain.cell_length
    assert list(lean.divide([3, 8])[1]) == list(plain.divide([3, 8])[1])
    fresh = LeanStrip(segments)
    made = [name for name in _STRIP_CACHES if name in dir(fresh) and _has_slot_value(fresh, name)]
    assert made == [], "a line that was never drawn carries no cache"


def _has_slot_value(strip, name: str) -> bool:  # type: ignore[no-untyped-def]
    descriptor = getattr(type(strip).__mro__[1], name)
    try:
        descriptor.__get__(strip)
    except AttributeError:
        return False
    return True


async def test_a_live_session_prunes_old_entries_and_page_up_builds_them_again() -> None:
    from agent import events as ev
    from tests.fixtures.transcript_screen import TranscriptScreenApp, tool_call, user
    from tui.transcript import HIGH_WATER

    turns = HIGH_WATER  # three entries a turn: well past the high-water mark

    async def scenario(transcript: Transcript) -> None:
        for turn in range(turns):
            await user(transcript, f"prompt number {turn}")
            await transcript.show(ev.TextDelta(f"Answer **{turn}**."))
            await transcript.show(ev.AssistantMessage([], "end_turn"))
            output = f"out-{turn}\n"
            await tool_call(transcript, f"t{turn}", "Bash", {"command": f"echo {turn}"}, output, output)

    app = TranscriptScreenApp(scenario)
    async with app.run_test(size=(120, 34)) as pilot:
        await app.play(pilot)
        transcript = app.query_one(Transcript)
        assert len(transcript.children) <= HIGH_WATER + 1, "old entries left the DOM"
        assert transcript.pruned > 0
        # ... and left memory: no style cache (with the lines its widget drew) outlives its widget.
        gc.collect()
        alive = {id(w._styles_cache) for w in gc.get_objects() if isinstance(w, Widget)}
        kept = [c for c in gc.get_objects() if isinstance(c, StylesCache) and id(c) not in alive]
        assert kept == [], f"{len(kept)} removed widgets' drawn lines are still held"
        while len(transcript.query_children(".earlier")):
            await transcript.page(-1)
            await pilot.pause()
        assert len(transcript.children) == 3 * turns, "every pruned entry was built again"
        assert str(transcript.children[0].render()) == "prompt number 0"
        assert transcript.children[1].source == "Answer **0**."
        first_panel = transcript.children[2]
        assert isinstance(first_panel, ToolPanel) and first_panel.has_class("ok")
        assert "out-0" in first_panel.body.text.plain and re.fullmatch(r"exit 0 · \d+\.\d s", first_panel.ending)
        assert "echo 0" in str(first_panel._title.render())


async def test_an_answer_streamed_in_pieces_is_drawn_exactly_as_the_whole_answer() -> None:
    from textual.app import App, ComposeResult

    answer = markdown_answer(6_000)

    class Two(App[None]):
        def compose(self) -> ComposeResult:
            yield MarkdownView(classes="streamed")
            yield MarkdownView(answer, classes="whole")

    app = Two()
    async with app.run_test(size=(100, 40)):
        streamed = app.query_one(".streamed", MarkdownView)
        for number, start in enumerate(range(0, len(answer), 8)):
            streamed.append(answer[start : start + 8])
            if number % 7 == 0:  # a frame now and then: blocks split off and the tail drawn from reused tokens
                streamed.invalidate()
                so_far = [line.text for line in MarkdownView(streamed.source).build(96)]
                assert [line.text for line in streamed.lines(96)] == so_far, f"after {start + 8} characters"
        streamed.invalidate()
        drawn = [line.text for line in streamed.lines(96)]
        assert drawn == [line.text for line in app.query_one(".whole", MarkdownView).lines(96)]
        assert any("def step_" in line for line in drawn) and drawn[-1].strip() == "LAST LINE OF THE ANSWER"


async def test_code_drawn_plain_takes_the_same_room_and_gets_its_colours_later() -> None:
    from textual.app import App, ComposeResult

    answer = "Before:\n\n```python\ndef step(x: int) -> int:\n    return x * 2  # doubled\n```\n\nAfter.\n"

    class One(App[None]):
        def compose(self) -> ComposeResult:
            view = MarkdownView(answer)
            view.highlight_code = False
            yield view

    app = One()
    async with app.run_test(size=(80, 20)):
        view = app.query_one(MarkdownView)
        plain = view.lines(76)
        code_colours = {seg.style.color for line in plain if "def step" in line.text for seg in line if seg.style}
        view.highlight()
        view.invalidate()
        coloured = view.lines(76)
        assert [line.text for line in coloured] == [line.text for line in plain], "colours only: nothing moves"
        line = next(line for line in coloured if "def step" in line.text)
        assert len({seg.style.color for seg in line if seg.style}) > len(code_colours), "the code is in colour now"


def test_the_languages_of_shown_code_are_found_for_their_lexers_to_be_built_first() -> None:
    answer = (
        "```Python\nx = 1\n```\n\n   ~~~~ bash {.numbered}\necho\n~~~~\n\n```\nplain\n```\n\n    ```json\nnot a fence\n"
    )
    assert MarkdownView(answer).code_languages() == ["python", "bash"]
