"""A full disk and a read-only home: a clear SessionStoreError naming the path, and the
session still loads. Real mounts (tmpfs, read-only bind mount), so these need root."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from session.blobs import BlobStore
from session.store import SessionStore, SessionStoreError
from tests.fixtures.session_support import assert_valid_messages, assistant_payload, text_block

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a bind mount needs root")


def _mount(*arguments: str) -> None:
    subprocess.run(["mount", *arguments], check=True, capture_output=True, timeout=30)


def _unmount(mount_point: Path) -> None:
    """Unmount, after collecting logs a failed test left open; lazily if something still holds it."""
    gc.collect()
    if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True, timeout=30)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point))
    try:
        yield mount_point
    finally:
        _unmount(mount_point)


@pytest.fixture
def read_only_later(tmp_path: Path) -> Iterator[list[Path]]:
    """Directories appended to the list are made read-only by a bind mount; undone afterwards."""
    mounted: list[Path] = []
    yield mounted
    for directory in reversed(mounted):
        _unmount(directory)


def _make_read_only(directory: Path, mounted: list[Path]) -> None:
    _mount("--bind", str(directory), str(directory))
    mounted.append(directory)
    _mount("-o", "remount,bind,ro", str(directory))


def test_full_disk_fails_the_append_cleanly_and_the_log_still_loads(full_disk: Path, tmp_path: Path) -> None:
    store = SessionStore(full_disk / "home")
    log = store.create(tmp_path)
    written = 0
    with pytest.raises(SessionStoreError) as failure:
        for n in range(100):
            log.append("user", {"content": f"prompt {n} " + "x" * 3000})
            written += 1
    assert failure.value.path == log.path
    assert str(log.path) in str(failure.value)
    assert "No space left on device" in str(failure.value)
    assert written > 5

    assert log.path.read_bytes().endswith(b"\n")  # the failed append left nothing behind
    reopened = store.open(log.session_id)
    assert len(reopened.events()) == 1 + written
    assert_valid_messages(reopened.conversation())
    assert [event.uuid for event in reopened.events()] == [event.uuid for event in log.events()]
    log.close()


def test_full_disk_fails_a_blob_and_a_new_session_without_leftovers(full_disk: Path, tmp_path: Path) -> None:
    store = SessionStore(full_disk / "home")
    log = store.create(tmp_path)
    with pytest.raises(SessionStoreError) as failure:
        log.put_blob(os.urandom(200_000))
    assert failure.value.path is not None and str(failure.value.path) in str(failure.value)
    assert not [path for path in (log.path.parent / "blobs").rglob("*") if path.is_file()]

    filler = full_disk / "filler"
    with pytest.raises(OSError):
        with open(filler, "wb") as file:
            while True:
                file.write(b"\0" * 4096)
                file.flush()
    with pytest.raises(SessionStoreError) as creating:
        store.create(tmp_path)
    assert "No space left on device" in str(creating.value)
    assert sorted(path.name for path in log.path.parent.glob("*.jsonl")) == [log.path.name]
    assert store.open(log.session_id).events()[0].type == "meta"
    log.close()
    store.close()


def test_full_disk_fails_a_blob_batch_without_temporary_files(full_disk: Path) -> None:
    store = BlobStore(full_disk / "blobs")
    with pytest.raises(SessionStoreError) as streaming:
        with store.batch() as batch:
            kept = batch.put(b"small enough")
            batch.put_stream(os.urandom(16_384) for _ in range(16))  # 256 KiB on a 64 KiB disk
    assert "No space left on device" in str(streaming.value)
    assert streaming.value.path is not None and str(streaming.value.path) in str(streaming.value)
    with pytest.raises(SessionStoreError) as putting:
        with store.batch() as batch:
            batch.put(os.urandom(200_000))
    assert "No space left on device" in str(putting.value)
    left = sorted(path.relative_to(store.root) for path in store.root.rglob("*") if path.is_file())
    assert left == [store.path_for(kept).relative_to(store.root)]
    assert store.get(kept) == b"small enough"


def test_read_only_home_refuses_writes_but_reads_list_and_searches(tmp_path: Path, read_only_later: list[Path]) -> None:
    home = tmp_path / "home"
    project = tmp_path / "project"
    project.mkdir()
    store = SessionStore(home)
    log = store.create(project)
    assert [summary.session_id for summary in store.list(project)] == [log.session_id]
    store.close()
    # The index is now out of date, and cannot be brought up to date on disk below.
    log.append("user", {"content": "a question about marmalade"})
    log.append("assistant", assistant_payload(text_block("an answer")))
    log.close()

    _make_read_only(home, read_only_later)
    readonly = SessionStore(home)
    reopened = readonly.open(log.session_id[:8])
    assert len(reopened.conversation()) == 2
    with pytest.raises(SessionStoreError) as appending:
        reopened.append("user", {"content": "more"})
    assert appending.value.path == log.path
    assert str(log.path) in str(appending.value) and "Read-only file system" in str(appending.value)
    with pytest.raises(SessionStoreError) as creating:
        readonly.create(project)
    assert "Read-only file system" in str(creating.value)
    with pytest.raises(SessionStoreError):
        reopened.put_blob(b"data")

    # The index file cannot be written, so the index is kept in memory instead.
    assert [summary.session_id for summary in readonly.list(project)] == [log.session_id]
    assert [hit.session_id for hit in readonly.search("marmalade")] == [log.session_id]
    assert len(readonly.open(log.session_id).events()) == 3
    readonly.close()
