"""Which files of a workspace count: gitignore-style rules, shared by both ends of the contract.

The harness uses them to choose what of a local project is uploaded; the host
uses the same rules (``ManifestRequest.exclude`` and ``gitignore``) to choose
what a manifest lists. Matching is pathspec's ``GitIgnoreSpec``, which follows
git's own rules (anchoring, ``**``, directory-only patterns, negation, last
match wins): a hand-written matcher would get the corner cases wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pathspec

DEPENDENCY_DIRS = (
    "node_modules/",
    ".venv/",
    "venv/",
    ".tox/",
    ".nox/",
    "__pycache__/",
    "*.pyc",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".gradle/",
    ".cache/",
)
"""Dependencies, virtualenvs and caches: never source, rebuilt in seconds, and often gigabytes."""

BUILD_OUTPUTS = (
    "target/",
    "dist/",
    "build/",
    ".next/",
    "*.egg-info/",
)
"""Usual build output directories. Some projects keep sources under such names, so in a git
repository these hold only for files git does not track."""

DEFAULT_EXCLUDES = DEPENDENCY_DIRS + BUILD_OUTPUTS
"""What a workspace leaves out unless told otherwise."""

GIT_DIR = ".git/"
"""The repository directory, as an exclude pattern."""


def compile_rules(lines: list[str] | tuple[str, ...]) -> pathspec.GitIgnoreSpec | None:
    """A matcher for gitignore-style ``lines`` (blank lines and comments allowed); None if there are none."""
    kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not kept:
        return None
    return pathspec.GitIgnoreSpec.from_lines(kept)


@dataclass
class IgnoreRules:
    """The rules in force at one directory of a walk: the root's excludes plus every ``.gitignore`` above.

    ``ignored(rel, is_dir)`` answers for a path relative to the workspace root. A
    deeper ``.gitignore`` is consulted after the ones above it and wins, as in git;
    a path inside an ignored directory is never asked about, because the walk does
    not enter it.
    """

    root: pathspec.GitIgnoreSpec | None
    """The excludes given for the whole workspace."""
    nested: list[tuple[str, pathspec.GitIgnoreSpec]] = field(default_factory=list)
    """``(directory prefix with trailing "/" or "", spec)`` from ``.gitignore`` files, outermost first."""

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether ``rel`` (workspace-relative, "/"-separated) is left out."""
        verdict = None
        probe = rel + "/" if is_dir else rel
        if self.root is not None:
            verdict = self.root.check_file(probe).include
        for prefix, spec in self.nested:
            if not probe.startswith(prefix):
                continue
            include = spec.check_file(probe[len(prefix) :]).include
            if include is not None:
                verdict = include
        return bool(verdict)

    def below(self, directory: str, gitignore_text: str | None) -> IgnoreRules:
        """The rules inside ``directory`` (workspace-relative, "" = root), given its ``.gitignore`` text if any."""
        if not gitignore_text:
            return self
        spec = compile_rules(gitignore_text.splitlines())
        if spec is None:
            return self
        prefix = directory + "/" if directory else ""
        return IgnoreRules(self.root, [*self.nested, (prefix, spec)])
