"""Carry a local project into a sandbox: one tar stream into ``Import``, and the baseline into the store.

Each file is read once: the same bytes feed the tar stream, the sha256 of the
baseline, and the project's blob store (content-addressed, so a second session
of the same project stores nothing new). The tar is built on a worker thread
while the event loop sends what is ready.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.sandbox_client import SandboxClient
from agent.workspace.selection import Selection
from agent.workspace.tarstream import TarBuilder, chunks_from_thread
from session.checkpoints import FileState, WorkspaceState


@dataclass
class UploadResult:
    """What went into the sandbox."""

    state: WorkspaceState = field(default_factory=dict)
    """Every uploaded path and its content, as the baseline checkpoint records it."""
    files: int = 0
    """Files and symlinks uploaded."""
    bytes: int = 0
    """Bytes of file content uploaded."""
    seconds: float = 0.0
    """Wall-clock time of the upload."""
    vanished: list[str] = field(default_factory=list)
    """Paths that disappeared between choosing and reading (left out)."""


def read_local(path: str) -> tuple[os.stat_result, bytes] | None:
    """``(lstat, content)`` of the file or symlink at ``path`` (a symlink's content is its target);
    None for anything else. ``FileNotFoundError`` if nothing is there."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return st, os.fsencode(os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as handle:
            return st, handle.read()
    return None


def normal_mode(mode: int) -> int:
    """``mode`` as workspaces keep it: the file type and the permission bits, nothing else."""
    return stat.S_IFMT(mode) | (mode & 0o777)


async def upload_project(
    client: SandboxClient, sandbox_id: str, project_dir: Path, selection: Selection, blobs
) -> UploadResult:
    """Send ``selection`` of ``project_dir`` into the sandbox's workspace; store each file's blob in ``blobs``.

    ``blobs`` is a batch from ``BlobStore.batch()``: its blobs become durable when the
    caller's batch closes, before the baseline checkpoint that names them is logged.
    """
    started = time.perf_counter()
    result = UploadResult()
    await client.import_tar(sandbox_id, chunks_from_thread(lambda: _tar_chunks(project_dir, selection, blobs, result)))
    result.seconds = time.perf_counter() - started
    return result


def _tar_chunks(project_dir: Path, selection: Selection, blobs, result: UploadResult) -> Iterator[bytes]:
    """The tar stream of ``selection``, in chunks; fills ``result`` as it goes."""
    tar = TarBuilder()
    root = os.fspath(project_dir)
    for item in selection.files:
        path = os.path.join(root, item.rel)
        try:
            found = read_local(path)
        except FileNotFoundError:
            result.vanished.append(item.rel)
            continue
        if found is None:
            continue
        st, data = found
        mode = normal_mode(st.st_mode)
        tar.add(item.rel, mode, data, int(st.st_mtime))
        result.state[item.rel] = FileState(blobs.put(data), mode, len(data))
        result.files += 1
        result.bytes += len(data)
        yield from tar.ready()
    yield from tar.close()
