"""The session log: round trips, durability, damaged files, rewind/fork, blobs, id lookup."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from session.blobs import BlobNotFound
from session.store import (
    AmbiguousSessionId,
    EventNotFound,
    SessionNotFound,
    SessionStore,
)
from tests.fixtures.session_support import (
    assert_valid_messages,
    assistant_payload,
    meta_payload,
    text_block,
    tool_result_payload,
    tool_use_block,
    write_log_file,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    """A store in a fresh home directory."""
    return SessionStore(tmp_path / "home")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory."""
    directory = tmp_path / "my project"
    directory.mkdir()
    return directory


def test_append_and_reopen_round_trip(store: SessionStore, project: Path) -> None:
    log = store.create(project, model="claude-test")
    first = log.append("user", {"content": "héllo ✓\nsecond line \u2028 with a line separator"})
    second = log.append("assistant", assistant_payload(text_block("hi"), cost=0.5))
    assert second.parent_uuid == first.uuid
    assert first.parent_uuid == log.events()[0].uuid
    assert log.leaf_uuid == second.uuid
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.timestamp)

    reopened = store.open(log.session_id)
    assert reopened.events() == log.events()
    assert reopened.project_dir == project.resolve()
    assert reopened.leaf_uuid == second.uuid
    meta = reopened.events()[0]
    assert meta.type == "meta" and meta.parent_uuid is None
    assert meta.payload["version"] == 1 and meta.payload["model"] == "claude-test"
    assert meta.payload["project_dir"] == str(project.resolve())
    assert meta.payload["created_by"].startswith("tether ")
    # One event per line; the U+2028 inside the prompt did not split the line.
    assert log.path.read_bytes().count(b"\n") == 3
    assert log.path.parent.parent.name == "projects"
    assert "my-project" in log.path.parent.name


def test_each_append_is_one_write_then_fsync(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from session.store import SessionStore
        log = SessionStore(Path(sys.argv[1])).create(Path(sys.argv[2]))
        for n in range(3):
            log.append("user", {"content": "prompt %d " % n + "x" * 5000})
        print(log.path)
        """
    )
    trace = tmp_path / "trace.txt"
    result = subprocess.run(
        [
            "strace",
            "-f",
            "-e",
            "trace=openat,write,fsync,ftruncate",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            script,
            str(tmp_path / "home"),
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    log_path = result.stdout.strip()
    calls = trace.read_text().splitlines()
    opened_at, fd = next(
        (number, re.search(r"= (\d+)$", line).group(1))
        for number, line in enumerate(calls)
        if "openat(" in line and log_path in line and "O_APPEND" in line
    )
    on_log = [
        re.sub(r"^\d+\s+", "", line).split("(")[0]
        for line in calls[opened_at:]
        if re.search(rf"\b(write|fsync|ftruncate)\({fd}[,)]", line)
    ]
    # The meta line, then three prompts: each exactly one write followed by one fsync.
    assert on_log == ["write", "fsync"] * 4


def test_torn_last_line_is_skipped_and_the_next_append_starts_fresh(
    store: SessionStore, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = store.create(project)
    prompt = log.append("user", {"content": "one"})
    log.close()
    with open(log.path, "ab") as file:
        file.write(b'{"uuid":"torn","parent_uuid":"x","sess')  # a crash mid-write
    with caplog.at_level(logging.WARNING):
        reopened = store.open(log.session_id)
    assert [event.uuid for event in reopened.events()][-1] == prompt.uuid
    assert "torn last line" in caplog.text

    later = reopened.append("user", {"content": "two"})
    assert later.parent_uuid == prompt.uuid
    lines = log.path.read_bytes().split(b"\n")
    assert lines[-2].startswith(b"{") and json.loads(lines[-2])["uuid"] == later.uuid
    again = store.open(log.session_id)
    assert [event.uuid for event in again.events()][-2:] == [prompt.uuid, later.uuid]


def test_damaged_lines_are_skipped_with_a_warning_and_the_rest_loads(
    store: SessionStore, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = store.create(project)
    log.append("user", {"content": "before the damage"})
    log.close()
    with open(log.path, "ab") as file:
        file.write(b"\x00" * 4096 + b"\n")  # what a lost block looks like after a crash
        file.write(b"this is not json\n")
        file.write(b'{"uuid":"no-other-fields"}\n')
        file.write(b"[1, 2, 3]\n")
        file.write(b'{"uuid":"x","parent_uuid":null,"session_id":1,"timestamp":"t","type":"user","payload":{}}\n')
        file.write(b"\xff\xfe not utf-8\n")
    with caplog.at_level(logging.WARNING):
        reopened = store.open(log.session_id)
        reopened.append("user", {"content": "after the damage"})
    assert caplog.text.count("skipping an unreadable line") == 6
    assert [event.type for event in reopened.events()] == ["meta", "user", "user"]
    assert reopened.conversation() == [
        {"role": "user", "content": [text_block("before the damage"), text_block("after the damage")]}
    ]
    assert len(store.open(log.session_id).events()) == 3


def test_nul_bytes_around_a_sound_line_do_not_lose_it(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    event = log.append("user", {"content": "kept"})
    log.close()
    data = log.path.read_bytes()
    lines = data.split(b"\n")
    lines[1] = b"\x00\x00\x00" + lines[1]
    log.path.write_bytes(b"\n".join(lines))
    assert store.open(log.session_id).events()[-1].uuid == event.uuid


def test_unknown_types_are_kept_but_not_sent_to_the_model(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    log.append("user", {"content": "hi"})
    future = log.append("hologram", {"anything": [1, 2]})
    log.append("assistant", assistant_payload(text_block("hello")))
    reopened = store.open(log.session_id)
    assert future in reopened.events()
    assert reopened.conversation() == [
        {"role": "user", "content": [text_block("hi")]},
        {"role": "assistant", "content": [text_block("hello")]},
    ]


def test_dangling_parent_is_attached_to_the_event_before_it(
    store: SessionStore, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = store.create(project)
    prompt = log.append("user", {"content": "question"})
    # As if the line between (this event's real parent) had been lost.
    answer = log.append("assistant", assistant_payload(text_block("answer")), parent_uuid=prompt.uuid)
    log.close()
    text = log.path.read_text().replace(
        f'"parent_uuid":"{prompt.uuid}","session_id":"{log.session_id}","timestamp":"{answer.timestamp}","type":"assistant"',
        f'"parent_uuid":"gone-missing","session_id":"{log.session_id}","timestamp":"{answer.timestamp}","type":"assistant"',
    )
    assert "gone-missing" in text
    log.path.write_text(text)
    with caplog.at_level(logging.WARNING):
        reopened = store.open(log.session_id)
    assert "gone-missing" in caplog.text
    repaired = reopened.events()[-1]
    assert repaired.uuid == answer.uuid and repaired.parent_uuid == prompt.uuid
    assert [event.uuid for event in reopened.live_path()][-2:] == [prompt.uuid, answer.uuid]
    assert len(reopened.conversation()) == 2


def test_a_parent_that_comes_later_in_the_file_cannot_make_a_loop(store: SessionStore, project: Path) -> None:
    path = write_log_file(store.home, project, [("meta", meta_payload(project)), ("user", {"content": "a"})])
    lines = path.read_bytes().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["parent_uuid"] = second["uuid"]  # a cycle: meta -> user -> meta
    path.write_bytes(json.dumps(first).encode() + b"\n" + lines[1] + b"\n")
    log = store.open(path.stem)
    assert [event.type for event in log.live_path()] == ["meta", "user"]


def test_tool_use_without_result_is_answered_with_an_error(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    log.append("user", {"content": "run it"})
    log.append(
        "assistant", assistant_payload(text_block("running"), tool_use_block("toolu_1"), tool_use_block("toolu_2"))
    )
    log.append("tool_result", tool_result_payload("toolu_1", "done"))
    # The process died here, before toolu_2's result.
    messages = store.open(log.session_id).conversation()
    assert_valid_messages(messages)
    assert messages[-1]["role"] == "user"
    results = {block["tool_use_id"]: block for block in messages[-1]["content"]}
    assert results["toolu_1"]["content"] == "done"
    assert results["toolu_2"]["is_error"] is True
    assert "interrupted" in results["toolu_2"]["content"]


def test_rewind_and_fork_make_a_branch_and_keep_the_old_one(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    log.append("user", {"content": "first question"})
    first_answer = log.append("assistant", assistant_payload(text_block("first answer")))
    old_prompt = log.append("user", {"content": "the road not taken"})
    old_answer = log.append("assistant", assistant_payload(text_block("old answer")))

    log.fork_at(first_answer.uuid)  # rewind to just before the second question
    assert log.leaf_uuid == first_answer.uuid
    new_prompt = log.append("user", {"content": "the road taken"})
    assert new_prompt.parent_uuid == first_answer.uuid
    log.append("assistant", assistant_payload(text_block("new answer")))

    for view in (log, store.open(log.session_id)):
        path_texts = [event.payload.get("content") for event in view.live_path() if event.type == "user"]
        assert path_texts == ["first question", "the road taken"]
        assert old_prompt.uuid in {event.uuid for event in view.events()}
        assert old_answer.uuid in {event.uuid for event in view.events()}
        conversation = view.conversation()
        assert_valid_messages(conversation)
        assert [message["content"][0]["text"] for message in conversation] == [
            "first question",
            "first answer",
            "the road taken",
            "new answer",
        ]
    with pytest.raises(EventNotFound):
        log.fork_at("no-such-event")
    with pytest.raises(EventNotFound):
        log.append("user", {"content": "x"}, parent_uuid="no-such-event")


def test_compaction_starts_the_conversation_from_the_summary(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    log.append("user", {"content": "old question"})
    log.append("assistant", assistant_payload(text_block("old answer")))
    log.append("compaction", {"summary": "We talked about old things."})
    log.append("user", {"content": "new question"})
    messages = log.conversation()
    assert_valid_messages(messages)
    assert len(messages) == 1
    texts = [block["text"] for block in messages[0]["content"]]
    assert "We talked about old things." in texts[0]
    assert texts[1] == "new question"
    assert "old question" not in json.dumps(messages)
    assert [event.type for event in log.events()].count("user") == 2  # nothing was removed


def test_conversation_messages_are_copies(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    log.append("user", {"content": [text_block("hi")]})
    messages = log.conversation()
    messages[0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    assert "cache_control" not in log.conversation()[0]["content"][0]


def test_blobs_are_content_addressed_and_written_once(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    data = os.urandom(100_000)
    sha = log.put_blob(data)
    blob = log.path.parent / "blobs" / sha[:2] / sha[2:]
    assert blob.read_bytes() == data
    inode, mtime = blob.stat().st_ino, blob.stat().st_mtime_ns
    assert log.put_blob(data) == sha
    assert (blob.stat().st_ino, blob.stat().st_mtime_ns) == (inode, mtime)
    assert store.open(log.session_id).get_blob(sha) == data
    assert [path.name for path in blob.parent.iterdir()] == [sha[2:]]  # no temp files left
    with pytest.raises(BlobNotFound):
        log.get_blob("0" * 64)
    assert log.put_blob(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_open_by_unique_prefix_and_ambiguity(store: SessionStore, project: Path, tmp_path: Path) -> None:
    other_project = tmp_path / "other"
    other_project.mkdir()
    first = write_log_file(
        store.home, project, [("meta", meta_payload(project))], session_id="abcd1111-0000-4000-8000-000000000000"
    )
    write_log_file(
        store.home,
        other_project,
        [("meta", meta_payload(other_project))],
        session_id="abcd2222-0000-4000-8000-000000000000",
    )
    assert store.open("abcd1").path == first
    assert store.open("ABCD1").path == first
    assert store.open("abcd2222-0000-4000-8000-000000000000").project_dir == other_project
    with pytest.raises(AmbiguousSessionId) as ambiguous:
        store.open("abcd")
    assert "abcd1111-0000-4000-8000-000000000000" in str(ambiguous.value)
    assert "abcd2222-0000-4000-8000-000000000000" in str(ambiguous.value)
    for missing in ("ffff", "", "../../etc", "*"):
        with pytest.raises(SessionNotFound):
            store.open(missing)


def test_latest_is_the_most_recently_updated_session_with_a_prompt(store: SessionStore, project: Path) -> None:
    assert store.latest(project) is None

    def session(when: str, *prompts: str) -> Path:
        events = [("meta", meta_payload(project)), *(("user", {"content": prompt}) for prompt in prompts)]
        return write_log_file(store.home, project, events, timestamp=when)

    older = session("2025-01-01T00:00:00.000Z", "first")
    newer = session("2025-06-01T00:00:00.000Z", "second")
    latest = store.latest(project)
    assert latest is not None and latest.path == newer
    store.open(older.stem).append("user", {"content": "older, but touched last"})
    latest = store.latest(project)
    assert latest is not None and latest.path == older
    # Quit (or killed) before its first prompt: nothing to continue there, the one before is meant.
    store.create(project).close()
    assert store.list(project)[0].message_count == 0, "the empty session is the newest"
    latest = store.latest(project)
    assert latest is not None and latest.path == older


def test_project_names_are_readable_and_do_not_collide(tmp_path: Path) -> None:
    from session.paths import project_name

    first, second = tmp_path / "a-b", tmp_path / "a" / "b"
    second.mkdir(parents=True)
    first.mkdir()
    assert project_name(first) != project_name(second)
    assert project_name(first).startswith(project_name(first).split("-")[0])
    assert "a-b" in project_name(first)
    deep = tmp_path / ("x" * 200)
    assert len(project_name(deep)) <= 71


def test_the_log_keeps_its_own_copy_of_a_payload(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    blocks = [text_block("answer")]
    log.append("assistant", assistant_payload(*blocks))
    blocks[0]["cache_control"] = {"type": "ephemeral"}  # the harness decorates what it sent
    assert "cache_control" not in str(log.conversation())
    assert log.events() == store.open(log.session_id).events()
