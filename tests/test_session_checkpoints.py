"""Workspace checkpoints: states through events and back, blob form, odd names, branches."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import orjson
import pytest

from session.checkpoints import (
    INLINE_CHANGES_MAX_BYTES,
    CheckpointChanges,
    CheckpointDamaged,
    FileState,
    WorkspaceState,
    apply_changes,
    checkpoints_on_path,
    decode_path,
    diff_states,
    encode_path,
    record_checkpoint,
    state_at,
)
from session.events import EventType
from session.store import SessionLog, SessionStore
from session.transcript import render_markdown


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    """A store in a fresh home directory."""
    return SessionStore(tmp_path / "home")


@pytest.fixture
def log(store: SessionStore, tmp_path: Path) -> SessionLog:
    """A new session of a fresh project."""
    project = tmp_path / "project"
    project.mkdir()
    return store.create(project)


def _file(content: str, mode: int = stat.S_IFREG | 0o644) -> FileState:
    data = os.fsencode(content)
    return FileState(hashlib.sha256(data).hexdigest(), mode, len(data))


def _checkpoint(log: SessionLog, old: WorkspaceState, new: WorkspaceState, seq: int, label: str = "tool"):
    return record_checkpoint(
        log,
        diff_states(old, new),
        seq=seq,
        after_tool_use_id=f"toolu_{seq}" if label == "tool" else None,
        label=label,
        files=len(new),
        bytes=sum(state.size for state in new.values()),
    )


# Names a workspace can hold: not UTF-8 (as os.fsdecode gives them), control characters,
# things that look like the encoding's marker or like base64, and plain ones.
ODD_NAMES = [
    os.fsdecode(b"caf\xe9.txt"),
    os.fsdecode(b"dir\xff/inner\xfe.bin"),
    "line\nbreak and\ttab.txt",
    'back\\slash "quoted".txt',
    "AAAA",
    "é/ü/日本語 ✓.md",
    "\u2028separator",
    " leading and trailing ",
]


def test_encoded_names_round_trip_and_are_plain_where_json_can_hold_them() -> None:
    for name in ODD_NAMES + ["\0starts with the marker"]:
        encoded = encode_path(name)
        assert decode_path(encoded) == name
        assert encoded.encode("utf-8")  # JSON text can hold it
    assert encode_path("src/main.py") == "src/main.py"
    assert encode_path(ODD_NAMES[0]) == "\0" + "Y2Fm6S50eHQ="  # base64 of b"caf\xe9.txt"
    assert encode_path("\0x").startswith("\0") and encode_path("\0x") != "\0x"
    with pytest.raises(ValueError, match="not a file name"):
        encode_path("\ud800")
    with pytest.raises(ValueError, match="damaged"):
        decode_path("\0not base64!")


def test_diff_then_apply_gives_the_new_state_and_leaves_the_old_one_alone() -> None:
    old = {"a": _file("a"), "b": _file("b"), "link": _file("a", stat.S_IFLNK | 0o777)}
    new = {"a": _file("a2"), "c": _file("c"), "link": _file("a", stat.S_IFLNK | 0o777)}
    before = dict(old)
    changes = diff_states(old, new)
    assert changes == CheckpointChanges(set={"a": _file("a2"), "c": _file("c")}, removed=["b"])
    assert apply_changes(old, changes) == new
    assert old == before
    assert diff_states(new, new) == CheckpointChanges()


def test_states_round_trip_through_checkpoint_events(log: SessionLog, store: SessionStore) -> None:
    first = {name: _file(name) for name in ODD_NAMES} | {"src/main.py": _file("print(1)")}
    second = dict(first) | {"src/main.py": _file("print(2)"), "new.txt": _file("new")}
    del second[ODD_NAMES[0]]
    third = dict(second) | {"run.sh": _file("#!/bin/sh", stat.S_IFREG | 0o755)}

    baseline = _checkpoint(log, {}, first, 0, "baseline")
    log.append("user", {"content": "change things"})
    edit = _checkpoint(log, first, second, 1)
    log.append("user", {"content": "more"})
    chmod = _checkpoint(log, second, third, 2)
    log.append("user", {"content": "no checkpoint after this"})

    assert edit.payload == {
        "seq": 1,
        "after": "toolu_1",
        "label": "tool",
        "files": len(second),
        "bytes": sum(state.size for state in second.values()),
        "set": {"new.txt": list(_as_list(_file("new"))), "src/main.py": list(_as_list(_file("print(2)")))},
        "removed": [encode_path(ODD_NAMES[0])],
    }
    lines = log.path.read_bytes().splitlines()
    assert all(orjson.loads(line) for line in lines)  # orjson refuses lone surrogates: none got in

    reopened = store.open(log.session_id)  # no cache: everything comes from the file
    assert state_at(reopened) == (third, chmod)
    assert state_at(reopened, edit.uuid) == (second, edit)
    assert state_at(reopened, baseline.uuid) == (first, baseline)
    assert state_at(reopened, reopened.events()[0].uuid) == ({}, None)
    assert [event.payload["seq"] for event in checkpoints_on_path(reopened)] == [0, 1, 2]


def _as_list(state: FileState) -> tuple[str, int, int]:
    return (state.sha256, state.mode, state.size)


def test_a_large_change_list_goes_into_a_blob_and_comes_back(log: SessionLog, store: SessionStore) -> None:
    baseline = {f"src/package_{n % 50}/module_{n}.py": _file(f"module {n}") for n in range(3000)}
    baseline[ODD_NAMES[1]] = _file("odd")
    event = record_checkpoint(
        log,
        diff_states({}, baseline),
        seq=0,
        after_tool_use_id=None,
        label="baseline",
        files=len(baseline),
        bytes=123,
        extra={"mode": "copy", "skipped": ["node_modules"]},
    )
    assert "set" not in event.payload and "removed" not in event.payload
    assert event.payload["mode"] == "copy" and event.payload["skipped"] == ["node_modules"]
    assert max(len(line) for line in log.path.read_bytes().splitlines()) < 1000
    blob = json.loads(log.get_blob(event.payload["changes_blob"]))
    assert len(json.dumps(blob)) > INLINE_CHANGES_MAX_BYTES
    assert blob["set"][encode_path(ODD_NAMES[1])] == list(_as_list(_file("odd")))

    later = dict(baseline) | {"src/package_1/module_1.py": _file("edited")}
    _checkpoint(log, baseline, later, 1)
    assert state_at(log)[0] == later
    assert state_at(store.open(log.session_id))[0] == later


def test_the_state_along_a_forked_path_ignores_the_other_branch(log: SessionLog) -> None:
    start = {"a.txt": _file("a")}
    _checkpoint(log, {}, start, 0, "baseline")
    prompt = log.append("user", {"content": "first try"})
    tried = start | {"b.txt": _file("b")}
    abandoned = _checkpoint(log, start, tried, 1)

    log.fork_at(prompt.uuid)  # rewind to just after the prompt
    assert state_at(log) == (start, checkpoints_on_path(log)[-1])
    rewound = _checkpoint(log, start, start, 2, "rewind")
    other = start | {"c.txt": _file("c")}
    _checkpoint(log, start, other, 3)

    assert state_at(log)[0] == other
    assert [event.payload["seq"] for event in checkpoints_on_path(log)] == [0, 2, 3]
    assert state_at(log, abandoned.uuid)[0] == tried
    assert state_at(log, rewound.uuid) == (start, rewound)


def test_bad_labels_and_clashing_extra_fields_are_refused(log: SessionLog) -> None:
    with pytest.raises(ValueError, match="label"):
        record_checkpoint(log, CheckpointChanges(), seq=0, after_tool_use_id=None, label="whim", files=0, bytes=0)
    with pytest.raises(ValueError, match="seq"):
        record_checkpoint(
            log,
            CheckpointChanges(),
            seq=0,
            after_tool_use_id=None,
            label="tool",
            files=0,
            bytes=0,
            extra={"seq": 9},
        )
    assert checkpoints_on_path(log) == []


def test_a_missing_changes_blob_is_a_readable_error(log: SessionLog, store: SessionStore) -> None:
    big = {f"file_{n}": _file(str(n)) for n in range(2000)}
    event = _checkpoint(log, {}, big, 0, "baseline")
    log.blobs.path_for(event.payload["changes_blob"]).unlink()
    with pytest.raises(CheckpointDamaged) as failure:
        state_at(store.open(log.session_id))
    assert failure.value.event.uuid == event.uuid
    assert f"checkpoint 0 (event {event.uuid})" in str(failure.value) and "no blob" in str(failure.value)


def test_a_malformed_set_entry_is_a_readable_error(log: SessionLog) -> None:
    event = log.append(
        EventType.CHECKPOINT,
        {
            "seq": 4,
            "after": None,
            "label": "tool",
            "files": 1,
            "bytes": 1,
            "set": {"a": ["sha", "mode"]},
            "removed": [],
        },
    )
    with pytest.raises(CheckpointDamaged, match="checkpoint 4"):
        state_at(log, event.uuid)


def test_the_transcript_shows_a_checkpoint_in_one_line(log: SessionLog) -> None:
    _checkpoint(log, {}, {"a": _file("abc")}, 7)
    assert "*Checkpoint 7 (tool): 1 file, 3 bytes*" in render_markdown(log.live_path())
