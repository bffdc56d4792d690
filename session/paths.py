"""Where the session store keeps things on disk.

Layout under the home directory::

    home/index.sqlite                           the search index (a cache)
    home/projects/<project-name>/<id>.jsonl     one event log per session
    home/projects/<project-name>/blobs/ab/cd…   the project's content-addressed blobs

A project name is the project's absolute path made readable (separators become
dashes) followed by a short hash of the full path, so two paths never share a
name even when their readable parts collide after trimming.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import platformdirs

HOME_ENV_VAR = "TETHER_HOME"
"""The environment variable that overrides the store's home directory."""

LOG_SUFFIX = ".jsonl"
"""The file suffix of a session log."""

_READABLE_MAX = 60
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_home() -> Path:
    """The store's home: $TETHER_HOME if set, else the platform's user data dir."""
    override = os.environ.get(HOME_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("tether"))


def canonical_project_dir(project_dir: Path) -> Path:
    """The absolute, symlink-free form of a project directory, used as its identity."""
    return Path(project_dir).expanduser().resolve()


def project_name(project_dir: Path) -> str:
    """A readable, collision-free directory name for a project directory."""
    full = str(canonical_project_dir(project_dir))
    readable = _UNSAFE.sub("-", full).strip("-") or "root"
    # Keep the end of the path: the last components are what a person recognises.
    readable = readable[-_READABLE_MAX:].lstrip("-.")
    digest = hashlib.sha256(full.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{readable}-{digest}"


def projects_root(home: Path) -> Path:
    """The directory that holds one directory per project."""
    return home / "projects"


def project_root(home: Path, project_dir: Path) -> Path:
    """The directory holding one project's session logs and blobs."""
    return projects_root(home) / project_name(project_dir)


def blobs_root(project_root_dir: Path) -> Path:
    """The content-addressed blob directory beside a project's logs."""
    return project_root_dir / "blobs"


def index_path(home: Path) -> Path:
    """The SQLite index file."""
    return home / "index.sqlite"
