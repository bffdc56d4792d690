"""The SQLite index: titles and counts, rebuilding when lost or damaged, catching up with
logs changed behind its back, and search across many sessions."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from session.index import SessionIndex
from session.store import SessionStore
from tests.fixtures.session_support import (
    assistant_payload,
    meta_payload,
    text_block,
    tool_result_payload,
    tool_use_block,
    write_log_file,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty store home."""
    return tmp_path / "home"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory."""
    directory = tmp_path / "project"
    directory.mkdir()
    return directory


def _session(
    home: Path,
    project: Path,
    prompt: str,
    *,
    result: str = "ok",
    session_id: str | None = None,
    timestamp: str = "2025-01-01T00:00:00.000Z",
) -> Path:
    """A small but complete session log: a prompt, a tool call, its result, an answer."""
    return write_log_file(
        home,
        project,
        [
            ("meta", meta_payload(project)),
            ("user", {"content": prompt}),
            ("assistant", assistant_payload(text_block("looking"), tool_use_block("toolu_1"), cost=0.25)),
            ("tool_result", tool_result_payload("toolu_1", result)),
            ("assistant", assistant_payload(text_block("all done"), cost=0.5)),
        ],
        session_id=session_id,
        timestamp=timestamp,
    )


def _rows(home: Path) -> list[tuple]:
    """The index's session rows, minus the bookkeeping columns."""
    with sqlite3.connect(home / "index.sqlite") as connection:
        return connection.execute(
            "SELECT id, project, title, first_prompt, created, updated, message_count, cost_usd"
            " FROM sessions ORDER BY id"
        ).fetchall()


def test_list_reports_title_counts_cost_and_newest_first(home: Path, project: Path) -> None:
    _session(
        home,
        project,
        "  \n  Fix the flaky test in the parser module " + "please " * 20 + "\nmore",
        session_id="11111111-0000-4000-8000-000000000000",
        timestamp="2025-01-01T00:00:00.000Z",
    )
    _session(
        home, project, "second", session_id="22222222-0000-4000-8000-000000000000", timestamp="2025-02-01T00:00:00.000Z"
    )
    summaries = SessionStore(home).list(project)
    assert [summary.session_id[:8] for summary in summaries] == ["22222222", "11111111"]
    older = summaries[1]
    assert older.title.startswith("Fix the flaky test in the parser module please")
    assert len(older.title) == 80 and older.title.endswith("…")
    assert older.first_prompt.endswith("more")
    assert older.message_count == 3 and older.cost_usd == pytest.approx(0.75)
    assert older.project_dir == project and older.created == "2025-01-01T00:00:00.000Z"


def test_the_newest_title_event_wins_over_the_first_prompt(home: Path, project: Path) -> None:
    store = SessionStore(home)
    log = store.create(project)
    log.append("user", {"content": "what the user typed"})
    assert store.list(project)[0].title == "what the user typed"
    log.append("title", {"title": "A model-made title", "source": "model"})
    assert store.list(project)[0].title == "A model-made title"
    log.append("title", {"title": "A better one", "source": "model"})
    log.append("user", {"content": "a later prompt"})
    assert store.list(project)[0].title == "A better one"
    assert store.list(project)[0].first_prompt == "what the user typed"


def test_projects_are_kept_apart_and_all_lists_everything(home: Path, project: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _session(home, project, "in project")
    _session(home, other, "in other")
    store = SessionStore(home)
    assert [summary.title for summary in store.list(project)] == ["in project"]
    assert [summary.title for summary in store.list(other)] == ["in other"]
    assert sorted(summary.title for summary in store.list()) == ["in other", "in project"]
    assert store.list(tmp_path / "never-used") == []


def test_index_is_rebuilt_after_deletion(home: Path, project: Path) -> None:
    for n in range(5):
        _session(home, project, f"prompt {n}")
    store = SessionStore(home)
    assert len(store.list(project)) == 5
    before = _rows(home)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{home / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    fresh = SessionStore(home)
    assert len(fresh.list(project)) == 5
    assert _rows(home) == before
    assert len(fresh.search("prompt")) == 5


@pytest.mark.parametrize("where", ["header", "middle", "everything"])
def test_index_is_rebuilt_after_corruption(
    home: Path, project: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(30):
        _session(home, project, f"prompt number {n} " + "words " * 200, result=f"result text {n}")
    store = SessionStore(home)
    assert len(store.list(project)) == 30
    store.close()
    index_file = home / "index.sqlite"
    with sqlite3.connect(index_file) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = index_file.stat().st_size
    garbage = os.urandom(4096)
    with open(index_file, "r+b") as file:
        if where == "header":
            file.write(garbage[:100])
        elif where == "middle":
            for offset in range(4096, size, 8192):
                file.seek(offset)
                file.write(garbage)
        else:
            file.truncate(0)
            file.write(garbage * 3)
    fresh = SessionStore(home)
    assert len(fresh.list(project)) == 30
    hits = fresh.search("result text 17")
    assert hits and hits[0].title.startswith("prompt number 17")
    assert len(fresh.search("words")) == 30
    if where != "middle":  # scattered damage may sit in pages these queries never read
        assert "rebuilding it from the logs" in caplog.text


def test_a_log_changed_behind_the_index_is_reindexed(home: Path, project: Path) -> None:
    store = SessionStore(home)
    log = store.create(project)
    log.append("user", {"content": "original prompt"})
    assert store.list(project)[0].message_count == 1
    assert store.search("quokka") == []
    with sqlite3.connect(home / "index.sqlite") as connection:  # mark what is indexed so far
        connection.execute("UPDATE message_text SET kind = 'indexed-before'")

    # Another process (another store) appends: the log only grew.
    other = SessionStore(home).open(log.session_id)
    other.append("assistant", assistant_payload(text_block("I saw a quokka"), cost=1.0))
    other.close()
    [summary] = store.list(project)
    assert summary.message_count == 2 and summary.cost_usd == 1.0
    # Read on from where it stopped: the rows of the old part were kept, one was added.
    assert _text_kinds(home) == ["indexed-before", "assistant"]
    assert [hit.session_id for hit in store.search("quokka")] == [log.session_id]
    assert _rows(home) == _rows_after_full_rebuild(home)

    # Someone rewrites the log: it no longer just grew, so it is read again from the start.
    lines = log.path.read_bytes().splitlines(keepends=True)
    rewritten = json.loads(lines[1])
    rewritten["payload"]["content"] = "a completely different prompt"
    log.path.write_bytes(lines[0] + json.dumps(rewritten).encode() + b"\n")
    [summary] = store.list(project)
    assert summary.title == "a completely different prompt" and summary.message_count == 1
    assert store.search("quokka") == [] and store.search("original") == []
    assert _rows(home) == _rows_after_full_rebuild(home)

    log.path.unlink()
    assert store.list(project) == [] and store.search("different") == []


def test_a_torn_tail_is_indexed_once_it_is_completed(home: Path, project: Path) -> None:
    store = SessionStore(home)
    log = store.create(project)
    log.append("user", {"content": "first"})
    log.close()
    with open(log.path, "ab") as file:
        file.write(b'{"uuid":"torn", "payload": {"content": "wombat')
    assert store.list(project)[0].message_count == 1
    reopened = store.open(log.session_id)
    reopened.append("user", {"content": "second wombat"})
    reopened.close()
    assert store.list(project)[0].message_count == 2
    assert len(store.search("wombat")) == 1
    assert _rows(home) == _rows_after_full_rebuild(home)


def _text_kinds(home: Path) -> list[str]:
    """The kinds of the index's message text rows, oldest first."""
    with sqlite3.connect(home / "index.sqlite") as connection:
        return [row[0] for row in connection.execute("SELECT kind FROM message_text ORDER BY id")]


def _rows_after_full_rebuild(home: Path) -> list[tuple]:
    """What the rows would be if the index were built from scratch (in a copy of the home)."""
    index = SessionIndex(home)
    index.path = home / "rebuilt-for-comparison.sqlite"
    index.rebuild()
    with sqlite3.connect(index.path) as connection:
        rows = connection.execute(
            "SELECT id, project, title, first_prompt, created, updated, message_count, cost_usd"
            " FROM sessions ORDER BY id"
        ).fetchall()
    index._discard()
    return rows


def test_search_finds_words_across_a_thousand_sessions(home: Path, project: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ids = {}
    for n in range(1000):
        owner = project if n % 2 == 0 else other
        prompt = f"session {n} please refactor module {n % 37}"
        result = f"compiled {n} files"
        if n == 417:
            result = "error: the zanzibarquux linker gave up"
        if n == 808:
            prompt = "Why does flibbertigibbet crash on start?"
        ids[n] = _session(home, owner, prompt, result=result).stem
    store = SessionStore(home)

    from_tool_result = store.search("zanzibarquux")
    assert [hit.session_id for hit in from_tool_result] == [ids[417]]
    assert from_tool_result[0].kind == "tool_result"
    assert "[zanzibarquux]" in from_tool_result[0].snippet
    from_user = store.search("flibbertigibbet", project)
    assert [(hit.session_id, hit.kind) for hit in from_user] == [(ids[808], "user")]
    assert store.search("zanzibarquux", project) == []  # session 417 is in the other project
    assert store.search("zanzibarq")[0].session_id == ids[417]  # words match as prefixes
    assert store.search("zanzibarquux flibbertigibbet") == []  # every word must match
    assert len(store.search("refactor", limit=20)) == 20
    assert len(store.search("refactor", limit=2000)) == 999  # all but session 808
    assert len(store.list()) == 1000 and len(store.list(project)) == 500
    for awkward in ('"', "AND", "a*b", "(", "--", "NEAR(", "'; DROP TABLE sessions; --", ""):
        store.search(awkward)  # never a syntax error
    assert len(store.list()) == 1000


def test_search_falls_back_to_a_scan_without_fts5(home: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import session.index

    monkeypatch.setattr(session.index, "fts5_available", lambda: False)  # as on a SQLite built without it
    _session(home, project, "a prompt about 100% of the_things", result="the zanzibarquux linker gave up")
    _session(home, project, "another prompt")
    store = SessionStore(home)
    assert len(store.list(project)) == 2
    with sqlite3.connect(home / "index.sqlite") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "message_text" in tables and "message_fts" not in tables
    [hit] = store.search("ZANZIBAR linker")
    assert hit.kind == "tool_result" and "[zanzibar]quux [linker]" in hit.snippet
    assert [hit.kind for hit in store.search("100%")] == ["user"]
    assert store.search("1_0%") == [] and len(store.search("the_things")) == 1
    assert len(store.search("prompt")) == 2
