"""The SQLite index of all sessions: fast listing and full-text search.

It is a cache of the JSONL logs, which stay the truth: a missing, corrupt or
outdated index is rebuilt from them. Before every list or search the index
compares each log's size and mtime with what it recorded and re-reads the logs
that changed, only from where it stopped when a log merely grew.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from session.errors import SessionStoreError
from session.events import Event, EventType, LineRejected, parse_line
from session.paths import LOG_SUFFIX, index_path, project_name, projects_root
from session.plaintext import content_text, searchable_text, title_from_prompt

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Bumped whenever the schema changes; an index of another version is rebuilt."""

MATCH_START = "["
"""Marks the start of a matched word in SearchHit.snippet."""
MATCH_END = "]"
"""Marks the end of a matched word in SearchHit.snippet."""

# How many bytes before the indexed end of a log must be unchanged for the index
# to trust that the log only grew (and read just the new part).
_TAIL_PROBE_BYTES = 256

# SQLite primary result codes that mean "try again later", not "the file is damaged".
_TRANSIENT_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
# ... and those that mean the file cannot be written here (read-only or full disk): index in memory.
_UNWRITABLE_CODES = {8, 13, 14}  # SQLITE_READONLY, SQLITE_FULL, SQLITE_CANTOPEN

_SCHEMA = """
CREATE TABLE sessions(
    row INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    folder TEXT NOT NULL,
    id TEXT NOT NULL,
    project TEXT NOT NULL,
    title TEXT NOT NULL,
    title_is_explicit INTEGER NOT NULL,
    first_prompt TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    message_count INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    file_size INTEGER NOT NULL,
    file_mtime INTEGER NOT NULL,
    indexed_offset INTEGER NOT NULL,
    tail_sha256 TEXT NOT NULL
);
CREATE INDEX sessions_by_folder ON sessions(folder, updated);
CREATE INDEX sessions_by_id ON sessions(id);
CREATE TABLE message_text(
    id INTEGER PRIMARY KEY,
    session_row INTEGER NOT NULL,
    event_uuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX message_text_by_session ON message_text(session_row);
"""

# Full-text search, where this Python's SQLite has FTS5 (without it, search falls back to LIKE).
_FTS_SCHEMA = """
CREATE VIRTUAL TABLE message_fts USING fts5(
    text, content='message_text', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2', prefix='2 3'
);
CREATE TRIGGER message_text_added AFTER INSERT ON message_text BEGIN
    INSERT INTO message_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER message_text_removed AFTER DELETE ON message_text BEGIN
    INSERT INTO message_fts(message_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

_T = TypeVar("_T")


@dataclass(frozen=True)
class SessionSummary:
    """One session as `list` shows it."""

    session_id: str
    """The session's id."""
    project_dir: Path
    """The project directory the session belongs to."""
    title: str
    """The newest `title` event's title, else the first prompt's first line."""
    first_prompt: str
    """The text of the first user prompt."""
    created: str
    """When the session was created (UTC ISO-8601)."""
    updated: str
    """When its newest event was written (UTC ISO-8601)."""
    message_count: int
    """How many user prompts and assistant messages the log holds (all branches)."""
    cost_usd: float
    """The sum of the assistant messages' costs."""
    path: Path
    """The session's log file."""


@dataclass(frozen=True)
class SearchHit:
    """The best match of a search in one session."""

    session_id: str
    """The session's id."""
    project_dir: Path
    """The project directory the session belongs to."""
    title: str
    """The session's title."""
    snippet: str
    """Text around the match, matched words between MATCH_START and MATCH_END."""
    event_uuid: str
    """The event the match is in."""
    kind: str
    """The type of that event (user, assistant, tool_result, compaction, title)."""
    updated: str
    """When the session's newest event was written (UTC ISO-8601)."""
    path: Path
    """The session's log file."""


@dataclass
class _SessionFacts:
    """What the index knows of one log, built by reading its events in order."""

    project: str = ""
    title: str = ""
    title_is_explicit: bool = False
    first_prompt: str = ""
    created: str = ""
    updated: str = ""
    message_count: int = 0
    cost_usd: float = 0.0

    def absorb(self, event: Event) -> None:
        """Account for the next event of the log."""
        payload = event.payload
        kind = event.type
        if not self.created:
            self.created = event.timestamp
        if event.timestamp > self.updated:
            self.updated = event.timestamp
        if kind == EventType.META:
            project = payload.get("project_dir")
            if isinstance(project, str) and not self.project:
                self.project = project
        elif kind == EventType.USER:
            self.message_count += 1
            if not self.first_prompt:
                self.first_prompt = content_text(payload.get("content")).strip()
                if not self.title_is_explicit:
                    self.title = title_from_prompt(self.first_prompt)
        elif kind == EventType.ASSISTANT:
            self.message_count += 1
            cost = payload.get("cost_usd")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool):
                self.cost_usd += float(cost)
        elif kind == EventType.TITLE:
            title = payload.get("title")
            if isinstance(title, str) and title.strip():
                self.title = " ".join(title.split())
                self.title_is_explicit = True


def summarize(session_id: str, path: Path, events: list[Event]) -> SessionSummary:
    """The summary of one session from its events, exactly as the index would record it."""
    facts = _SessionFacts()
    for event in events:
        facts.absorb(event)
    return SessionSummary(
        session_id=session_id,
        project_dir=Path(facts.project or path.parent),
        title=facts.title,
        first_prompt=facts.first_prompt,
        created=facts.created,
        updated=facts.updated,
        message_count=facts.message_count,
        cost_usd=facts.cost_usd,
        path=path,
    )


class SessionIndex:
    """The index at home/index.sqlite, kept in step with the logs under home/projects/."""

    def __init__(self, home: Path) -> None:
        self.home: Path = home
        """The store's home directory."""
        self.path: Path = index_path(home)
        """The SQLite file."""
        self._connection: sqlite3.Connection | None = None
        self._in_memory = False
        # A picker may search from a worker thread: one operation at a time.
        self._lock = threading.RLock()

    # -- public ------------------------------------------------------------

    def list(self, project_dir: Path | None = None) -> list[SessionSummary]:
        """Sessions of one project (None: all projects), newest first."""

        def query() -> list[SessionSummary]:
            """Refresh, then read the rows."""
            self._refresh(project_dir)
            sql = (
                "SELECT id, project, title, first_prompt, created, updated, message_count, cost_usd, path FROM sessions"
            )
            parameters: tuple[Any, ...] = ()
            if project_dir is not None:
                sql += " WHERE folder = ?"
                parameters = (project_name(project_dir),)
            sql += " ORDER BY updated DESC, file_mtime DESC"
            return [
                SessionSummary(
                    session_id=row[0],
                    project_dir=Path(row[1]),
                    title=row[2],
                    first_prompt=row[3],
                    created=row[4],
                    updated=row[5],
                    message_count=row[6],
                    cost_usd=row[7],
                    path=Path(row[8]),
                )
                for row in self._db().execute(sql, parameters)
            ]

        return self._with_rebuild(query)

    def search(self, text: str, project_dir: Path | None = None, limit: int = 50) -> builtins.list[SearchHit]:
        """The best match per session for every word of text (as word prefixes), best first."""
        words = text.split()
        if not words or limit <= 0:
            return []

        def query() -> builtins.list[SearchHit]:
            """Refresh, then match."""
            self._refresh(project_dir)
            columns = "s.row, s.id, s.project, s.title, s.updated, s.path, m.event_uuid, m.kind"
            parameters: list[Any]
            if fts5_available():
                sql = (
                    f"SELECT {columns}, snippet(message_fts, 0, '{MATCH_START}', '{MATCH_END}', '…', 12)"
                    " FROM message_fts JOIN message_text m ON m.id = message_fts.rowid"
                    " JOIN sessions s ON s.row = m.session_row WHERE message_fts MATCH ?"
                )
                parameters = [fts_query(text)]
                order = " ORDER BY message_fts.rank"
            else:
                sql = (
                    f"SELECT {columns}, m.text FROM message_text m JOIN sessions s ON s.row = m.session_row"
                    " WHERE " + " AND ".join(["m.text LIKE ? ESCAPE '\\'"] * len(words))
                )
                parameters = ["%" + _escape_like(word) + "%" for word in words]
                order = " ORDER BY s.updated DESC"
            if project_dir is not None:
                sql += " AND s.folder = ?"
                parameters.append(project_name(project_dir))
            hits: list[SearchHit] = []
            seen: set[int] = set()
            for row in self._db().execute(sql + order, parameters):
                if row[0] in seen:
                    continue
                seen.add(row[0])
                snippet = row[8] if fts5_available() else _plain_snippet(row[8], words)
                hits.append(
                    SearchHit(
                        session_id=row[1],
                        project_dir=Path(row[2]),
                        title=row[3],
                        snippet=" ".join(snippet.split()),
                        event_uuid=row[6],
                        kind=row[7],
                        updated=row[4],
                        path=Path(row[5]),
                    )
                )
                if len(hits) >= limit:
                    break
            return hits

        return self._with_rebuild(query)

    def rebuild(self) -> None:
        """Throw the index away and build it again from the logs."""
        with self._lock:
            self._discard()
            self._run_or_rebuild(lambda: self._refresh(None))

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- keeping in step with the logs -------------------------------------

    def _refresh(self, project_dir: Path | None) -> None:
        """Re-index the logs that appeared, changed or vanished since the last look."""
        root = projects_root(self.home)
        folders = [project_name(project_dir)] if project_dir is not None else _subdirectories(root)
        on_disk: dict[str, tuple[str, int, int]] = {}
        for folder in folders:
            try:
                entries = os.scandir(root / folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    if entry.name.endswith(LOG_SUFFIX):
                        try:
                            if not entry.is_file():
                                continue
                            stat = entry.stat()
                        except OSError:
                            continue  # deleted while we looked
                        on_disk[entry.path] = (folder, stat.st_size, stat.st_mtime_ns)

        database = self._db()
        sql = "SELECT row, path, file_size, file_mtime FROM sessions"
        parameters: tuple[Any, ...] = ()
        if project_dir is not None:
            sql += " WHERE folder = ?"
            parameters = (folders[0],)
        known = {path: (row, size, mtime) for row, path, size, mtime in database.execute(sql, parameters)}

        vanished = [row for path, (row, _, _) in known.items() if path not in on_disk]
        changed = [
            path for path, (_, size, mtime) in on_disk.items() if path not in known or known[path][1:] != (size, mtime)
        ]
        if not vanished and not changed:
            return
        with self._transaction() as database:
            for row in vanished:
                database.execute("DELETE FROM message_text WHERE session_row = ?", (row,))
                database.execute("DELETE FROM sessions WHERE row = ?", (row,))
            for path in changed:
                folder, size, mtime = on_disk[path]
                self._index_log(database, Path(path), folder, size, mtime)

    def _index_log(self, database: sqlite3.Connection, path: Path, folder: str, size: int, mtime: int) -> None:
        """(Re-)index one log, reading only its new part when it merely grew."""
        previous = database.execute(
            "SELECT row, project, title, title_is_explicit, first_prompt, created, updated,"
            " message_count, cost_usd, indexed_offset, tail_sha256 FROM sessions WHERE path = ?",
            (str(path),),
        ).fetchone()
        try:
            with open(path, "rb") as log:
                start, facts, before = 0, _SessionFacts(), b""
                if previous is not None:
                    offset, tail_sha256 = previous[9], previous[10]
                    probe_start = max(0, offset - _TAIL_PROBE_BYTES)
                    log.seek(probe_start)
                    probe = log.read(offset - probe_start)
                    if offset <= size and _sha256(probe) == tail_sha256:
                        start, facts, before = offset, _SessionFacts(*previous[1:9]), probe
                    else:
                        database.execute("DELETE FROM message_text WHERE session_row = ?", (previous[0],))
                log.seek(start)
                data = log.read(max(0, size - start))
        except FileNotFoundError:
            if previous is not None:
                database.execute("DELETE FROM message_text WHERE session_row = ?", (previous[0],))
                database.execute("DELETE FROM sessions WHERE row = ?", (previous[0],))
            return
        except OSError as error:
            logger.warning("cannot index %s: %s", path, error.strerror or error)
            return

        # Only whole lines: a torn tail is indexed once a later append completes it.
        complete = data[: data.rfind(b"\n") + 1]
        end = start + len(complete)
        texts: list[tuple[str, str, str]] = []
        for line in complete.split(b"\n")[:-1]:
            try:
                event = parse_line(line)
            except LineRejected:
                continue  # the log's reader warns about these; the index need not repeat it
            facts.absorb(event)
            text = searchable_text(event)
            if text.strip():
                texts.append((event.uuid, event.type, text))

        # What the next look must find unchanged to read on from `end`.
        tail_sha256 = _sha256((before + complete)[-_TAIL_PROBE_BYTES:])
        values = (
            facts.project or str(path.parent),
            facts.title,
            int(facts.title_is_explicit),
            facts.first_prompt,
            facts.created,
            facts.updated,
            facts.message_count,
            facts.cost_usd,
            size,
            mtime,
            end,
            tail_sha256,
        )
        if previous is None:
            cursor = database.execute(
                "INSERT INTO sessions(path, folder, id, project, title, title_is_explicit,"
                " first_prompt, created, updated, message_count, cost_usd, file_size, file_mtime,"
                " indexed_offset, tail_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (str(path), folder, path.stem, *values),
            )
            row = cursor.lastrowid
        else:
            row = previous[0]
            database.execute(
                "UPDATE sessions SET project = ?, title = ?, title_is_explicit = ?, first_prompt = ?,"
                " created = ?, updated = ?, message_count = ?, cost_usd = ?, file_size = ?,"
                " file_mtime = ?, indexed_offset = ?, tail_sha256 = ? WHERE row = ?",
                (*values, row),
            )
        database.executemany(
            "INSERT INTO message_text(session_row, event_uuid, kind, text) VALUES (?, ?, ?, ?)",
            [(row, event_uuid, kind, text) for event_uuid, kind, text in texts],
        )

    # -- the database ------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """The open connection, opening (and creating or rebuilding) the database if needed."""
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _connect(self) -> sqlite3.Connection:
        """Open the index file with the current schema, creating it when absent."""
        if self._in_memory:
            connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            try:
                self.home.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            except (OSError, sqlite3.OperationalError) as error:
                self._switch_to_memory(error)
                connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise sqlite3.DatabaseError(f"index schema version {version}, expected {SCHEMA_VERSION}")
                connection.execute("PRAGMA journal_mode = WAL")
                schema = _SCHEMA + (_FTS_SCHEMA if fts5_available() else "")
                connection.executescript(f"BEGIN; {schema} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            connection.execute("PRAGMA synchronous = NORMAL")  # a cache: speed over durability
        except BaseException:
            connection.close()
            raise
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so two refreshing processes queue."""
        database = self._db()
        database.execute("BEGIN IMMEDIATE")
        try:
            yield database
        except BaseException:
            try:
                database.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more; a damaged file is rebuilt by the caller
            raise
        database.execute("COMMIT")

    def _with_rebuild(self, operation: Callable[[], _T]) -> _T:
        """Run operation; if the index turns out damaged, discard it, rebuild and run it again."""
        with self._lock:
            return self._run_or_rebuild(operation)

    def _run_or_rebuild(self, operation: Callable[[], _T]) -> _T:
        """_with_rebuild's body, under the lock."""
        try:
            return operation()
        except sqlite3.DatabaseError as error:
            code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
            if code in _TRANSIENT_CODES:
                raise SessionStoreError(f"the session index {self.path} is busy: {error}", self.path) from None
            if code in _UNWRITABLE_CODES and not self._in_memory:
                self.close()
                self._switch_to_memory(error)
            else:
                logger.warning("the session index %s is unusable (%s); rebuilding it from the logs", self.path, error)
                self._discard()
        try:
            return operation()
        except sqlite3.DatabaseError as error:
            raise SessionStoreError(f"cannot rebuild the session index {self.path}: {error}", self.path) from None

    def _switch_to_memory(self, error: Exception) -> None:
        """Index in memory from now on: a read-only home can still be listed and searched."""
        logger.warning("cannot write the session index %s (%s); indexing in memory", self.path, error)
        self._in_memory = True

    def _discard(self) -> None:
        """Close and delete the index files."""
        self.close()
        if self._in_memory:
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            except OSError as error:
                logger.warning("cannot delete %s%s: %s", self.path, suffix, error.strerror or error)


@functools.cache
def fts5_available() -> bool:
    """Whether this Python's SQLite was built with FTS5 (checked once per process)."""
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE probe USING fts5(text)")
    except sqlite3.OperationalError:
        logger.warning("this Python's SQLite has no FTS5; session search falls back to a slower scan")
        return False
    return True


def _escape_like(word: str) -> str:
    """word with LIKE's wildcards escaped (the escape character is a backslash)."""
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _plain_snippet(text: str, words: list[str], width: int = 40) -> str:
    """Text around the first word found, the words marked as FTS5's snippet() marks them."""
    lowered = text.lower()
    position = min((found for word in words if (found := lowered.find(word.lower())) >= 0), default=0)
    start, end = max(0, position - width), position + width * 2
    excerpt = text[start:end]
    for word in sorted(set(words), key=len, reverse=True):
        excerpt = re.sub(
            re.escape(word), lambda match: f"{MATCH_START}{match.group(0)}{MATCH_END}", excerpt, flags=re.IGNORECASE
        )
    return ("…" if start else "") + excerpt + ("…" if end < len(text) else "")


def fts_query(text: str) -> str:
    """An FTS5 expression matching rows that hold every word of text, each as a word prefix."""
    return " ".join('"' + word.replace('"', '""') + '"*' for word in text.split())


def _subdirectories(root: Path) -> list[str]:
    """The names of the directories in root (none if root does not exist)."""
    try:
        with os.scandir(root) as entries:
            return [entry.name for entry in entries if entry.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _sha256(data: bytes) -> str:
    """The sha256 hex digest of data."""
    return hashlib.sha256(data).hexdigest()
