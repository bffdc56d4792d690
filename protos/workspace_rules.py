"""Which files of a workspace count: gitignore-style rules, shared by both ends of the contract.

The harness uses them to choose what of a local project is uploaded; the host
uses the same rules (``ManifestRequest.exclude`` and ``gitignore``) to choose
what a manifest lists. Matching is pathspec's ``GitIgnoreSpec``, which follows
git's own rules (anchoring, ``**``, directory-only patterns, negation, last
match wins): a hand-written matcher would get the corner cases wrong.
"""

from __future__ import annotations

import functools
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


class RuleSet:
    """Compiled gitignore-style lines that remember their answers.

    The same workspace is walked again after every tool call, asking about the
    same ten thousand paths: a regex test per pattern per path cost ~6 us, a
    remembered answer a dict lookup.
    """

    MEMO_LIMIT = 200_000
    """Answers kept before the memo starts afresh (bounds memory on huge trees)."""

    def __init__(self, lines: tuple[str, ...]) -> None:
        """Compile ``lines`` (already without blanks and comments)."""
        self.lines = lines
        """The patterns, as given."""
        self.spec = pathspec.GitIgnoreSpec.from_lines(lines)
        """pathspec's matcher."""
        self._memo: dict[str, bool | None] = {}

    def verdict(self, probe: str) -> bool | None:
        """True: ignored; False: re-included by a negation; None: no pattern matches ``probe``.

        A directory is asked about with a trailing "/".
        """
        try:
            return self._memo[probe]
        except KeyError:
            pass
        if len(self._memo) >= self.MEMO_LIMIT:
            self._memo.clear()
        answer = self.spec.check_file(probe).include
        self._memo[probe] = answer
        return answer

    def match_file(self, path: str) -> bool:
        """Whether ``path`` (a file) is ignored."""
        return bool(self.verdict(path))


def compile_rules(lines: list[str] | tuple[str, ...]) -> RuleSet | None:
    """A matcher for gitignore-style ``lines`` (blank lines and comments allowed); None if there are none.

    The same lines give the same object (so its memo is shared by every walk that uses them).
    """
    kept = tuple(line for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not kept:
        return None
    return _compiled(kept)


@functools.lru_cache(maxsize=256)
def _compiled(lines: tuple[str, ...]) -> RuleSet:
    return RuleSet(lines)


@dataclass
class IgnoreRules:
    """The rules in force at one directory of a walk: the root's excludes plus every ``.gitignore`` above.

    ``ignored(rel, is_dir)`` answers for a path relative to the workspace root. A
    deeper ``.gitignore`` is consulted after the ones above it and wins, as in git;
    a path inside an ignored directory is never asked about, because the walk does
    not enter it.
    """

    root: RuleSet | None
    """The excludes given for the whole workspace."""
    nested: list[tuple[str, RuleSet]] = field(default_factory=list)
    """``(directory prefix with trailing "/" or "", rules)`` from ``.gitignore`` files, outermost first."""

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether ``rel`` (workspace-relative, "/"-separated) is left out."""
        verdict = None
        probe = rel + "/" if is_dir else rel
        if self.root is not None:
            verdict = self.root.verdict(probe)
        for prefix, rules in self.nested:
            if not probe.startswith(prefix):
                continue
            include = rules.verdict(probe[len(prefix) :])
            if include is not None:
                verdict = include
        return bool(verdict)

    def below(self, directory: str, gitignore_text: str | None) -> IgnoreRules:
        """The rules inside ``directory`` (workspace-relative, "" = root), given its ``.gitignore`` text if any."""
        if not gitignore_text:
            return self
        rules = compile_rules(gitignore_text.splitlines())
        if rules is None:
            return self
        prefix = directory + "/" if directory else ""
        return IgnoreRules(self.root, [*self.nested, (prefix, rules)])
