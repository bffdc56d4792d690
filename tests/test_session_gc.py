"""Blob garbage collection: only unreferenced old blobs go; referenced and young ones stay."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from session.blobs import BlobStore
from session.checkpoints import FileState, diff_states, record_checkpoint
from session.errors import SessionStoreError
from session.gc import collect_garbage, project_folders, referenced_blobs
from session.store import SessionLog, SessionStore
from tests.fixtures.session_support import tool_result_payload

ROOT = Path(__file__).resolve().parent.parent
OLD = time.time() - 2 * 3600


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    """A store in a fresh home directory."""
    return SessionStore(tmp_path / "home")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory."""
    directory = tmp_path / "project"
    directory.mkdir()
    return directory


def _age(store: BlobStore, *shas: str) -> None:
    """Make blobs look two hours old."""
    for sha in shas:
        os.utime(store.path_for(sha), (OLD, OLD))


def _file_state(sha: str, size: int) -> FileState:
    return FileState(sha, stat.S_IFREG | 0o644, size)


def _tool_result_with_blob(log: SessionLog, data: bytes) -> str:
    sha = log.put_blob(data)
    payload = tool_result_payload("toolu_1", "capped") | {"output_blob": sha, "output_bytes": len(data)}
    log.append("tool_result", payload)
    return sha


def test_only_unreferenced_old_blobs_are_removed(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    blobs = log.blobs
    output = _tool_result_with_blob(log, b"full tool output")
    with blobs.batch() as batch:
        inline_file = batch.put(b"a file named inline")
        big_files = [batch.put(b"file %d" % n) for n in range(1500)]
        unreferenced = batch.put(b"content of a checkpoint never recorded")
        young = batch.put(b"just written, event not appended yet")
    record_checkpoint(
        log,
        diff_states({}, {"a.txt": _file_state(inline_file, 19)}),
        seq=0,
        after_tool_use_id=None,
        label="baseline",
        files=1,
        bytes=19,
    )
    big = {f"dir/file_{n}.txt": _file_state(sha, 6) for n, sha in enumerate(big_files)}
    large = record_checkpoint(
        log, diff_states({}, big), seq=1, after_tool_use_id="toolu_1", label="tool", files=len(big), bytes=0
    )
    changes_blob = large.payload["changes_blob"]
    nested = log.put_blob(b"a sandbox manifest the harness keeps")
    log.append(
        "sandbox",
        {"event": "provisioned", "host": "embedded", "extra": {"manifest_blob": nested}, "parts_blobs": [output]},
    )
    # A branch that is not live still references its blobs.
    branch_point = log.events()[1].uuid
    log.fork_at(branch_point)
    on_old_branch = _tool_result_with_blob(log, b"output on a branch")
    log.close()
    other_session = store.create(project)
    in_other_session = _tool_result_with_blob(other_session, b"output of another session")
    other_session.close()

    referenced = [output, inline_file, *big_files, changes_blob, nested, on_old_branch, in_other_session]
    _age(blobs, *referenced, unreferenced)
    stale_temporary = blobs.root / "ab" / ".tmp-0123"
    stale_temporary.parent.mkdir(exist_ok=True)
    stale_temporary.write_bytes(b"half a blob from a crash")
    os.utime(stale_temporary, (OLD, OLD))
    fresh_temporary = blobs.root / ".tmp-4567"
    fresh_temporary.write_bytes(b"a blob being written right now")

    folder = log.path.parent
    assert referenced_blobs(folder) >= set(referenced)
    assert unreferenced not in referenced_blobs(folder) and young not in referenced_blobs(folder)

    dry = collect_garbage(folder, dry_run=True)
    assert sorted(item.name for item in dry.removed) == sorted([unreferenced, ".tmp-0123"])
    assert unreferenced in blobs and stale_temporary.exists()

    report = collect_garbage(folder)
    assert sorted(item.name for item in report.removed) == sorted([unreferenced, ".tmp-0123"])
    assert report.bytes_freed == len(b"content of a checkpoint never recorded") + len(b"half a blob from a crash")
    assert report.kept_referenced == len(set(referenced)) and report.kept_young == 1
    assert unreferenced not in blobs and not stale_temporary.exists()
    assert all(sha in blobs for sha in referenced) and young in blobs and fresh_temporary.exists()


def test_putting_an_old_unreferenced_blob_again_saves_it(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    sha = log.put_blob(b"written long ago")
    _age(log.blobs, sha)
    log.put_blob(b"written long ago")  # a writer about to name it in an event
    assert collect_garbage(log.path.parent).removed == []
    assert sha in log.blobs


def test_a_missing_changes_blob_is_warned_about_and_an_unreadable_one_stops_collection(
    store: SessionStore, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = store.create(project)
    files = {f"f{n}": _file_state(hashlib.sha256(b"%d" % n).hexdigest(), 1) for n in range(2000)}
    event = record_checkpoint(
        log, diff_states({}, files), seq=0, after_tool_use_id=None, label="baseline", files=len(files), bytes=0
    )
    unreferenced = log.put_blob(b"garbage")
    _age(log.blobs, unreferenced)
    changes = log.blobs.path_for(event.payload["changes_blob"])

    changes.write_bytes(b"{not json")
    with pytest.raises(SessionStoreError, match="refusing to collect"):
        collect_garbage(log.path.parent)
    assert unreferenced in log.blobs

    changes.unlink()
    with caplog.at_level(logging.WARNING):
        report = collect_garbage(log.path.parent)
    assert "is missing" in caplog.text
    assert [item.name for item in report.removed] == [unreferenced]


def test_project_folders_finds_one_project_or_all(store: SessionStore, project: Path, tmp_path: Path) -> None:
    assert project_folders(store.home, project) == [] and project_folders(store.home, None) == []
    log = store.create(project)
    other = tmp_path / "other"
    other.mkdir()
    store.create(other)
    assert project_folders(store.home, project) == [log.path.parent]
    assert len(project_folders(store.home, None)) == 2


def _run_cli(home: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TETHER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "session.cli", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_gc_command_prints_what_it_removes_and_the_bytes_freed(
    store: SessionStore, project: Path, tmp_path: Path
) -> None:
    log = store.create(project)
    kept = _tool_result_with_blob(log, b"kept output")
    gone = log.put_blob(b"x" * 2048)
    _age(log.blobs, kept, gone)
    other = tmp_path / "other"
    other.mkdir()
    elsewhere = store.create(other)
    elsewhere_garbage = elsewhere.put_blob(b"garbage elsewhere")
    _age(elsewhere.blobs, elsewhere_garbage)

    dry = _run_cli(store.home, project, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {gone}  2048 bytes (2.0 KiB)" in dry.stdout
    assert (
        "Would remove 1 blob, would free 2048 bytes (2.0 KiB); kept 1 in use and 0 younger than an hour." in dry.stdout
    )
    assert gone in log.blobs

    done = _run_cli(store.home, project, "gc")
    assert done.returncode == 0, done.stderr
    assert f"removed {gone}" in done.stdout and "Removed 1 blob, freed 2048 bytes" in done.stdout
    assert gone not in log.blobs and kept in log.blobs
    assert elsewhere_garbage in elsewhere.blobs  # another project is left alone without --all

    everywhere = _run_cli(store.home, project, "gc", "--all")
    assert everywhere.returncode == 0, everywhere.stderr
    assert f"{elsewhere.path.parent.name}: removed {elsewhere_garbage}" in everywhere.stdout
    assert elsewhere_garbage not in elsewhere.blobs

    refused = _run_cli(store.home, project, "gc", "--all", "--project", str(project))
    assert refused.returncode == 1 and "not allowed with argument" in refused.stderr
    nothing = _run_cli(store.home, tmp_path, "gc")
    assert nothing.returncode == 0 and "No sessions in" in nothing.stdout


def test_show_lists_checkpoints_compactly(store: SessionStore, project: Path) -> None:
    log = store.create(project)
    log.append("user", {"content": "make a file"})
    record_checkpoint(
        log,
        diff_states({}, {"a": _file_state("0" * 64, 5)}),
        seq=3,
        after_tool_use_id="toolu_1",
        label="tool",
        files=1,
        bytes=5,
    )
    shown = _run_cli(store.home, project, "show", log.session_id)
    assert shown.returncode == 0, shown.stderr
    assert "*Checkpoint 3 (tool): 1 file, 5 bytes*" in shown.stdout
