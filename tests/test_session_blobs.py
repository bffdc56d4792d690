"""The blob store: batched writes made durable together, streams, cheap checks, clean failures."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import session.blobs as blobs_module
from session.blobs import TEMPORARY_PREFIX, BlobNotFound, BlobStore
from session.errors import SessionStoreError

ROOT = Path(__file__).resolve().parent.parent


def _temporary_files(root: Path) -> list[Path]:
    return [path for path in root.rglob(f"{TEMPORARY_PREFIX}*")]


def test_batch_stores_blobs_and_streams_under_their_sha256(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    chunks = [os.urandom(100_000) for _ in range(5)]
    with store.batch() as batch:
        small = batch.put(b"hello")
        again = batch.put(b"hello")
        streamed = batch.put_stream(iter(chunks))
        empty = batch.put_stream([])
    whole = b"".join(chunks)
    assert small == again == hashlib.sha256(b"hello").hexdigest()
    assert streamed == hashlib.sha256(whole).hexdigest()
    assert empty == hashlib.sha256(b"").hexdigest()
    assert batch.written == [small, streamed, empty]  # the second "hello" was already there
    assert store.get(small) == b"hello" and store.get(streamed) == whole and store.get(empty) == b""
    assert store.size(streamed) == len(whole) and store.size("0" * 64) is None
    assert streamed in store and "0" * 64 not in store and "not a sha" not in store
    with store.open(streamed) as file:
        assert file.read(10) == whole[:10]
    with pytest.raises(BlobNotFound):
        store.open("0" * 64)
    assert not _temporary_files(store.root)


def test_put_stream_of_a_stored_blob_leaves_one_copy_and_no_temporary_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = store.put(b"abc" * 1000)
    with store.batch() as batch:
        assert batch.put_stream([b"abc" * 500, b"abc" * 500]) == sha
    assert batch.written == []
    assert [path for path in store.root.rglob("*") if path.is_file()] == [store.path_for(sha)]


def test_a_failing_stream_inside_a_batch_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")

    def broken() -> Iterator[bytes]:
        yield b"first part"
        raise ConnectionError("the sandbox went away mid-file")

    with pytest.raises(ConnectionError):
        with store.batch() as batch:
            kept = batch.put(b"complete before the failure")
            batch.put_stream(broken())
    assert store.get(kept) == b"complete before the failure"
    assert not _temporary_files(store.root)
    with pytest.raises(SessionStoreError, match="already ended"):
        batch.put(b"too late")


def test_an_error_in_the_callers_block_still_leaves_complete_blobs_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(KeyError):
        with store.batch() as batch:
            sha = batch.put(b"x" * 10)
            raise KeyError("the caller failed")
    assert store.get(sha) == b"x" * 10
    assert not _temporary_files(store.root)


def _count_syncs(monkeypatch: pytest.MonkeyPatch, *, have_syncfs: bool) -> tuple[list[int], list[Path]]:
    """Count os.fsync calls and syncfs calls made by the blob module."""
    fsyncs: list[int] = []
    syncfs_calls: list[Path] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    def fake_syncfs(directory: Path) -> bool:
        if not have_syncfs:
            return False
        syncfs_calls.append(directory)
        return True

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(blobs_module, "_syncfs", fake_syncfs)
    return fsyncs, syncfs_calls


def test_a_batch_syncs_the_file_system_once_then_each_touched_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.root.mkdir()
    fsyncs, syncfs_calls = _count_syncs(monkeypatch, have_syncfs=True)
    with store.batch() as batch:
        shas = [batch.put(f"blob {n}".encode()) for n in range(40)]
        assert fsyncs == [] and syncfs_calls == []  # nothing is synced while the batch runs
    directories = {sha[:2] for sha in shas}
    assert syncfs_calls == [store.root]
    # One fsync per new fan-out directory, plus the root whose entries they are.
    assert len(fsyncs) == len(directories) + 1


def test_without_syncfs_a_batch_fsyncs_each_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.root.mkdir()
    store.put(b"already there")
    fsyncs, _ = _count_syncs(monkeypatch, have_syncfs=False)
    with store.batch() as batch:
        shas = [batch.put(f"blob {n}".encode()) for n in range(10)]
        batch.put(b"already there")
    directories = {sha[:2] for sha in shas}
    assert len(fsyncs) == len(shas) + len(directories) + 1


def test_a_batch_is_one_syncfs_and_no_fsync_of_a_blob_file(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from session.blobs import BlobStore
        store = BlobStore(Path(sys.argv[1]))
        with store.batch() as batch:
            for n in range(50):
                batch.put(b"blob %d" % n)
            batch.put_stream([b"streamed " * 1000] * 3)
        """
    )
    trace = tmp_path / "trace.txt"
    subprocess.run(
        [
            "strace",
            "-f",
            "-e",
            "trace=openat,fsync,syncfs",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            script,
            str(tmp_path / "blobs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    calls = [re.sub(r"^\d+\s+", "", line) for line in trace.read_text().splitlines()]
    opened: dict[str, str] = {}
    synced: list[str] = []
    syncfs_count = 0
    for line in calls:
        if line.startswith("openat(") and (match := re.search(r'"([^"]*)".*= (\d+)$', line)):
            opened[match.group(2)] = match.group(1) + (" (directory)" if "O_DIRECTORY" in line else "")
        elif line.startswith("fsync("):
            synced.append(opened[re.match(r"fsync\((\d+)\)", line).group(1)])
        elif line.startswith("syncfs("):
            syncfs_count += 1
    assert syncfs_count == 1
    assert synced and all(path.endswith(" (directory)") for path in synced), synced
    assert len(synced) == len(set(synced))  # each directory once


def test_putting_a_stored_blob_again_makes_it_young(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha = store.put(b"old content")
    os.utime(store.path_for(sha), (1_000_000, 1_000_000))
    store.put(b"old content")
    assert store.path_for(sha).stat().st_mtime > 1_000_000
    os.utime(store.path_for(sha), (1_000_000, 1_000_000))
    with store.batch() as batch:
        batch.put_stream([b"old ", b"content"])
    assert store.path_for(sha).stat().st_mtime > 1_000_000


def test_a_small_batch_fsyncs_its_few_blobs_instead_of_the_whole_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.root.mkdir()
    fsyncs, syncfs_calls = _count_syncs(monkeypatch, have_syncfs=True)
    with store.batch() as batch:
        shas = [batch.put(f"small {n}".encode()) for n in range(3)]
    directories = {sha[:2] for sha in shas}
    assert syncfs_calls == []
    assert len(fsyncs) == len(shas) + len(directories) + 1
