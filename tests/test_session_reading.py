"""Reading a log fast: lines through a reused buffer, lines parsed from views, the collector paused."""

from __future__ import annotations

import gc
import io
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from session.events import LineRejected, parse_line
from session.lines import CHUNK_BYTES, read_lines
from session.store import SessionStore
from tests.fixtures.session_support import (
    assistant_payload,
    meta_payload,
    text_block,
    thinking_block,
    tool_result_payload,
    tool_use_block,
    write_log_file,
)


def split_like_the_format(data: bytes) -> list[tuple[bytes, bool]]:
    """What read_lines must yield: every line, then the torn tail if there is one."""
    *lines, tail = data.split(b"\n")
    return [(line, True) for line in lines] + ([(tail, False)] if tail else [])


def read_all(data: bytes, chunk_bytes: int) -> list[tuple[bytes, bool]]:
    """read_lines over data, each view copied before the next overwrites it."""
    return [(bytes(line), terminated) for line, terminated in read_lines(io.BytesIO(data), chunk_bytes)]


def test_lines_come_out_whole_at_any_chunk_size() -> None:
    generator = random.Random(4)
    for _ in range(300):
        # Short lines, empty lines, lines many chunks long, with or without a torn tail.
        data = b"\n".join(b"x" * generator.choice([0, 1, 5, 17, 64]) for _ in range(generator.randint(0, 12)))
        if generator.random() < 0.5:
            data += b"\n"
        for chunk_bytes in (1, 2, 3, 7, 16, 100):
            assert read_all(data, chunk_bytes) == split_like_the_format(data), (data, chunk_bytes)


def test_an_empty_file_has_no_lines() -> None:
    assert read_all(b"", 8) == []
    assert read_all(b"\n", 8) == [(b"", True)]


def test_a_line_longer_than_the_read_buffer_loads_whole(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    huge = "0123456789abcdef" * (3 * CHUNK_BYTES // 16 + 5)  # three buffers and a bit
    path = write_log_file(
        home,
        project,
        [
            ("meta", meta_payload(project)),
            ("user", {"content": "run it"}),
            ("assistant", assistant_payload(tool_use_block("t1"))),
            ("tool_result", tool_result_payload("t1", huge)),
            ("user", {"content": "thanks"}),
        ],
    )
    log = SessionStore(home).open(path.stem)
    assert [event.type for event in log.events()] == ["meta", "user", "assistant", "tool_result", "user"]
    messages = log.conversation()
    assert messages[2]["content"][0]["content"] == huge
    assert messages[2]["content"][1] == text_block("thanks")


def test_a_torn_tail_after_a_long_line_is_skipped_with_its_own_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    long_prompt = "p" * (CHUNK_BYTES + 10)
    path = write_log_file(home, project, [("meta", meta_payload(project)), ("user", {"content": long_prompt})])
    with open(path, "ab") as file:
        file.write(b'{"uuid":"torn","parent_uu')
    with caplog.at_level(logging.WARNING):
        log = SessionStore(home).open(path.stem)
    assert "3: skipping a torn last line" in caplog.text
    assert "unreadable" not in caplog.text
    assert log.conversation() == [{"role": "user", "content": [text_block(long_prompt)]}]


LINES = [
    b'{"uuid":"a","parent_uuid":null,"session_id":"s","timestamp":"t","type":"meta","payload":{}}',
    b' \t{"uuid":"b","parent_uuid":"a","session_id":"s","timestamp":"t","type":"user","payload":{"x":1}}\r',
    b'\x00\x00{"uuid":"c","parent_uuid":"b","session_id":"s","timestamp":"t","type":"user","payload":{}}\x00',
    b'{"uuid":"d","parent_uuid":null,"session_id":"s","timestamp":"t","type":"user","payload":{"s":"\\ud800"}}',
    b"",
    b"\x00\x00\x00",
    b"not json",
    b"[1]",
    b'{"uuid":"e"}',
    b'{"uuid":"","parent_uuid":null,"session_id":"s","timestamp":"t","type":"user","payload":{}}',
    b'{"uuid":"f","parent_uuid":null,"session_id":"s","timestamp":"t","type":"user","payload":[]}',
    b"\xff\xfe not utf-8",
]


def outcome(line: bytes | memoryview) -> object:
    """The event parse_line makes of line, or the reason it gives for rejecting it."""
    try:
        return parse_line(line)
    except LineRejected as reason:
        return f"rejected: {reason}"


@pytest.mark.parametrize("line", LINES)
def test_a_view_of_a_line_parses_as_its_bytes_do(line: bytes) -> None:
    padded = b"junk\n" + line + b"\nmore"  # a view into a larger buffer, as read_lines hands out
    view = memoryview(padded)[5 : 5 + len(line)]
    assert outcome(view) == outcome(line)


def test_sound_lines_parse_and_damaged_ones_give_reasons() -> None:
    results = [outcome(line) for line in LINES]
    assert [getattr(result, "uuid", None) for result in results[:4]] == ["a", "b", "c", "d"]
    assert all(isinstance(result, str) and result.startswith("rejected: ") for result in results[4:]), results


def big_log(tmp_path: Path, turns: int = 1500) -> tuple[SessionStore, str]:
    """A log of prompts, calls and results that builds well over 10,000 objects when loaded."""
    home, project = tmp_path / "home", tmp_path / "project"
    entries: list[tuple[str, dict[str, object]]] = [("meta", meta_payload(project))]
    for turn in range(turns):
        tool_id = f"toolu_{turn}"
        entries.append(("user", {"content": f"prompt {turn}"}))
        entries.append(("assistant", assistant_payload(thinking_block("hmm"), tool_use_block(tool_id))))
        entries.append(("tool_result", tool_result_payload(tool_id, f"output {turn}")))
    path = write_log_file(home, project, entries)
    return SessionStore(home), path.stem


@pytest.fixture
def collector_restored() -> Iterator[None]:
    """Start with nothing frozen (code run earlier in this process may have frozen its imports); put the collector back."""
    was_enabled = gc.isenabled()
    gc.unfreeze()
    yield
    gc.unfreeze()
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_a_large_load_leaves_the_collector_on_with_its_objects_in_the_oldest_generation(
    tmp_path: Path, collector_restored: None
) -> None:
    store, session_id = big_log(tmp_path)
    gc.enable()
    log = store.open(session_id)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    # Promoted without being walked: no young collection will spend time on them.
    oldest = {id(item) for item in gc.get_objects(generation=2)}
    assert id(log.events()[-1]) in oldest
    messages = log.conversation()
    assert gc.isenabled()
    assert id(messages[-1]) in {id(item) for item in gc.get_objects(generation=2)}


def test_loading_keeps_a_paused_collector_paused(tmp_path: Path, collector_restored: None) -> None:
    store, session_id = big_log(tmp_path, turns=50)
    gc.disable()
    store.open(session_id).conversation()
    assert not gc.isenabled()


def test_loading_does_not_undo_a_freeze_made_by_someone_else(tmp_path: Path, collector_restored: None) -> None:
    store, session_id = big_log(tmp_path)
    gc.enable()
    kept = [["a container the collector tracks"]]
    gc.freeze()  # e.g. a server about to fork
    assert gc.get_freeze_count() > 0
    store.open(session_id).conversation()
    # Still frozen: in none of the three generations (unfreeze() would put it in the oldest).
    # (The freeze count itself may drop: frozen objects that die leave it.)
    tracked = {id(item) for generation in range(3) for item in gc.get_objects(generation=generation)}
    assert id(kept) not in tracked and id(kept[0]) not in tracked
    # The log's own objects joined the frozen ones: no collection walks them either.
    log = store.open(session_id)
    tracked = {id(item) for generation in range(3) for item in gc.get_objects(generation=generation)}
    assert id(log.events()[-1]) not in tracked
