"""Garbage collection of a project's blobs: remove those no session log names, unless young.

A blob is referenced when any event of any session log of the project (on any
branch) names it: a payload field ending in `_blob` (a sha256) or `_blobs` (a list
of them), at any depth — `output_blob` of tool results, `changes_blob` of
checkpoints, and whatever a harness adds in the same style — and every file sha256
in a checkpoint's `set`, including the `set` inside a changes blob.

A blob younger than MIN_AGE_SECONDS is never removed: a running session may have
written it and not yet appended the event that names it (and a writer that finds
its blob already stored makes it young again; see blobs.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from session.blobs import TEMPORARY_PREFIX, BlobNotFound, BlobStore, is_sha256
from session.errors import SessionStoreError, describe_os_error
from session.events import EventType
from session.log import read_log
from session.paths import LOG_SUFFIX, blobs_root, project_root, projects_root

logger = logging.getLogger(__name__)

MIN_AGE_SECONDS: Final = 3600
"""Blobs (and unfinished writes) younger than this are kept whatever the logs say."""


@dataclass(frozen=True, slots=True)
class RemovedFile:
    """A file in the blob directory that collection removed (or would remove, in a dry run)."""

    name: str
    """The blob's sha256, or the name of an unfinished write (`.tmp-…`)."""
    path: Path
    """Where it was."""
    size: int
    """Its size in bytes."""


@dataclass(slots=True)
class CollectionReport:
    """What collecting one project's blobs did."""

    project_folder: Path
    """The project's folder in the store (the logs and their `blobs/`)."""
    dry_run: bool
    """Whether nothing was actually removed."""
    removed: list[RemovedFile] = field(default_factory=list)
    """Unreferenced old blobs and stale unfinished writes, removed (or to be, in a dry run)."""
    kept_referenced: int = 0
    """Blobs kept because a log names them."""
    kept_young: int = 0
    """Unreferenced blobs kept because they are younger than the minimum age."""

    @property
    def bytes_freed(self) -> int:
        """The total size of the removed files."""
        return sum(item.size for item in self.removed)


def project_folders(home: Path, project_dir: Path | None) -> list[Path]:
    """The store folders to collect: the one of project_dir, or every project's (None)."""
    if project_dir is not None:
        folder = project_root(home, project_dir)
        return [folder] if folder.is_dir() else []
    root = projects_root(home)
    try:
        return sorted(path for path in root.iterdir() if path.is_dir())
    except FileNotFoundError:
        return []
    except OSError as error:
        raise describe_os_error("list the projects in", root, error) from None


def referenced_blobs(project_folder: Path) -> set[str]:
    """Every blob sha256 the session logs in project_folder name (see the module's docstring).

    Raises SessionStoreError if a log or an existing changes blob cannot be read:
    collecting without knowing every reference could remove something still needed.
    """
    store = BlobStore(blobs_root(project_folder))
    references: set[str] = set()
    changes_blobs: set[str] = set()
    for log_path in sorted(project_folder.glob(f"*{LOG_SUFFIX}")):
        for event in read_log(log_path):
            payload = event.payload
            _collect_named(payload, references)
            if event.type == EventType.CHECKPOINT:
                _collect_set(payload.get("set"), references)
                if is_sha256(payload.get("changes_blob")):
                    changes_blobs.add(payload["changes_blob"])
    for sha in sorted(changes_blobs):
        try:
            document = json.loads(store.get(sha))
        except BlobNotFound:
            logger.warning("%s: checkpoint changes blob %s is missing", project_folder, sha)
            continue
        except ValueError as error:
            raise SessionStoreError(
                f"refusing to collect {project_folder}: checkpoint changes blob {sha} is not JSON ({error}), "
                "so the file blobs it names are unknown",
                store.path_for(sha),
            ) from None
        if isinstance(document, dict):
            _collect_set(document.get("set"), references)
    return references


def collect_garbage(
    project_folder: Path,
    *,
    dry_run: bool = False,
    min_age_seconds: float = MIN_AGE_SECONDS,
    now: float | None = None,
) -> CollectionReport:
    """Remove the project's blobs that no log names and that are older than min_age_seconds.

    Stale unfinished writes (`.tmp-…` files older than min_age_seconds) go too. With
    dry_run nothing is removed; the report says what would be.
    """
    report = CollectionReport(project_folder, dry_run)
    root = blobs_root(project_folder)
    if not root.is_dir():
        return report
    references = referenced_blobs(project_folder)
    cutoff = (time.time() if now is None else now) - min_age_seconds
    for name, path in _stored_files(root):
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise describe_os_error("look at the blob", path, error) from None
        if name in references:
            report.kept_referenced += 1
            continue
        if status.st_mtime >= cutoff:
            if not name.startswith(TEMPORARY_PREFIX):
                report.kept_young += 1
            continue
        if not dry_run and not _remove_if_still_old(path, cutoff):
            report.kept_young += 1
            continue
        report.removed.append(RemovedFile(name, path, status.st_size))
    return report


def _stored_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(sha256 or temporary name, path) of every blob and unfinished write under root."""
    try:
        top = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError as error:
        raise describe_os_error("list the blobs in", root, error) from None
    for entry in top:
        if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file(follow_symlinks=False):
            yield entry.name, Path(entry.path)
        elif len(entry.name) == 2 and entry.is_dir(follow_symlinks=False):
            try:
                inner = sorted(os.scandir(entry.path), key=lambda item: item.name)
            except OSError as error:
                raise describe_os_error("list the blobs in", Path(entry.path), error) from None
            for item in inner:
                if not item.is_file(follow_symlinks=False):
                    continue
                if item.name.startswith(TEMPORARY_PREFIX):
                    yield item.name, Path(item.path)
                elif is_sha256(entry.name + item.name):
                    yield entry.name + item.name, Path(item.path)
                # Anything else is not ours to remove.


def _remove_if_still_old(path: Path, cutoff: float) -> bool:
    """Unlink path unless a writer made it young since it was looked at; whether it went."""
    try:
        if path.stat().st_mtime >= cutoff:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise describe_os_error("remove the blob", path, error) from None
    return True


def _collect_named(value: Any, references: set[str]) -> None:
    """Add every sha256 in a `*_blob` / `*_blobs` field anywhere inside value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.endswith("_blob"):
                if is_sha256(item):
                    references.add(item)
            elif isinstance(key, str) and key.endswith("_blobs") and isinstance(item, list):
                references.update(sha for sha in item if is_sha256(sha))
            elif isinstance(item, (dict, list)):
                _collect_named(item, references)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                _collect_named(item, references)


def _collect_set(entries: Any, references: set[str]) -> None:
    """Add the file sha256 of every entry of a checkpoint's `set` ({path: [sha, mode, size]})."""
    if not isinstance(entries, dict):
        return
    for entry in entries.values():
        if isinstance(entry, list) and entry and is_sha256(entry[0]):
            references.add(entry[0])
