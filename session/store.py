"""The session store: where sessions are created, found, listed and searched."""

from __future__ import annotations

import builtins
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from session.blobs import BlobStore
from session.errors import AmbiguousSessionId, SessionNotFound, SessionStoreError
from session.events import FORMAT_VERSION, Event, EventType
from session.log import LEAF, EventNotFound, SessionLog
from session.paths import (
    LOG_SUFFIX,
    blobs_root,
    canonical_project_dir,
    default_home,
    project_root,
    projects_root,
)

if TYPE_CHECKING:
    from session.index import SearchHit, SessionIndex, SessionSummary

__all__ = [
    "LEAF",
    "AmbiguousSessionId",
    "Event",
    "EventNotFound",
    "EventType",
    "SearchHit",
    "SessionLog",
    "SessionNotFound",
    "SessionStore",
    "SessionStoreError",
    "SessionSummary",
]


def __getattr__(name: str) -> Any:
    """``SearchHit`` and ``SessionSummary``, from the index module, imported when first asked for."""
    if name in ("SearchHit", "SessionSummary"):
        from session import index

        return getattr(index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")


class SessionStore:
    """All sessions under one home directory, grouped by project directory."""

    def __init__(self, home: Path | None = None) -> None:
        self.home: Path = Path(home) if home is not None else default_home()
        """The store's home: $TETHER_HOME, else the platform's user data dir."""
        self._index: SessionIndex | None = None

    @property
    def index(self) -> SessionIndex:
        """The listing and search index (opened on first use)."""
        if self._index is None:
            from session.index import SessionIndex  # sqlite: not needed to open a session by id

            self._index = SessionIndex(self.home)
        return self._index

    def create(self, project_dir: Path, *, model: str | None = None, cwd: Path | None = None) -> SessionLog:
        """Start a new session for project_dir; its log's first line is a `meta` event."""
        project = canonical_project_dir(project_dir)
        folder = project_root(self.home, project)
        session_id = str(uuid.uuid4())
        meta = {
            "version": FORMAT_VERSION,
            "project_dir": str(project),
            "cwd": str(cwd if cwd is not None else Path.cwd()),
            "model": model,
            "created_by": f"tether {_tether_version()}",
        }
        return SessionLog.create(
            folder / f"{session_id}{LOG_SUFFIX}", session_id, project, BlobStore(blobs_root(folder)), meta
        )

    def open(self, session_id_or_prefix: str) -> SessionLog:
        """Load the session with this id or unique id prefix, in any project."""
        return _load(self.find(session_id_or_prefix))

    def find(self, session_id_or_prefix: str) -> Path:
        """The log file of the session with this id or unique id prefix."""
        prefix = session_id_or_prefix.strip().lower()
        if not _ID_PREFIX.fullmatch(prefix):
            raise SessionNotFound(session_id_or_prefix)
        matches = sorted(projects_root(self.home).glob(f"*/{prefix}*{LOG_SUFFIX}"))
        exact = [path for path in matches if path.stem == prefix]
        if len(exact) == 1:
            return exact[0]
        if not matches:
            raise SessionNotFound(session_id_or_prefix)
        if len(matches) > 1:
            stems = {path.stem for path in matches}
            # The same id in two project folders (a copied log) is listed by path.
            candidates = sorted(stems) if len(stems) == len(matches) else [str(path) for path in matches]
            raise AmbiguousSessionId(session_id_or_prefix, candidates)
        return matches[0]

    def latest(self, project_dir: Path) -> SessionLog | None:
        """The project's most recently updated session with a prompt in it, or None if it has none.

        A session left without one (tether quit, or was killed, before the first prompt) has nothing to
        continue: the one before it is meant.
        """
        for summary in self.index.list(project_dir):
            if not summary.message_count:
                continue
            try:
                return _load(summary.path)
            except SessionStoreError:
                continue  # deleted since it was listed: try the next newest
        return None

    def list(self, project_dir: Path | None = None) -> list[SessionSummary]:
        """Sessions of one project (None: all projects), newest first."""
        return self.index.list(project_dir)

    def search(self, text: str, project_dir: Path | None = None, limit: int = 50) -> builtins.list[SearchHit]:
        """Sessions whose messages or tool results hold every word of text, best match first."""
        return self.index.search(text, project_dir, limit)

    def close(self) -> None:
        """Close the index connection."""
        if self._index is not None:
            self._index.close()


def _load(path: Path) -> SessionLog:
    """Load the log at path with the blob directory beside it."""
    return SessionLog.load(path, BlobStore(blobs_root(path.parent)))


def _tether_version() -> str:
    """The installed tether version, or 'unknown' when run from a bare checkout."""
    from importlib import metadata  # ~10 ms to import: only a new session needs it

    try:
        return metadata.version("tether")
    except metadata.PackageNotFoundError:
        return "unknown"
