"""Glob patterns as models write them (``**/*.py``, ``src/*.{ts,tsx}``), matched against relative paths."""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regex matching whole relative paths (``/``-separated) against ``pattern``.

    ``**`` matches any number of directories, ``*`` and ``?`` stay within one
    path segment, ``[...]`` is a character class and ``{a,b}`` alternation.
    A pattern without ``/`` matches a file name at any depth, as ``**/`` before it.
    """
    if "/" not in pattern:
        pattern = "**/" + pattern
    return re.compile(_translate(pattern) + r"\Z", re.DOTALL)


def _translate(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append(r"(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(r".*")
            i += 2
        elif c == "*":
            out.append(r"[^/]*")
            i += 1
        elif c == "?":
            out.append(r"[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "^") else i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
        elif c == "{":
            end = _matching_brace(pattern, i)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                options = _split_top_level(pattern[i + 1 : end])
                out.append("(?:" + "|".join(_translate(o) for o in options) + ")")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _matching_brace(pattern: str, start: int) -> int:
    depth = 0
    for j in range(start, len(pattern)):
        if pattern[j] == "{":
            depth += 1
        elif pattern[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _split_top_level(body: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current.append(ch)
    parts.append("".join(current))
    return parts


_PLAIN_NAME_GLOB = re.compile(r"[^\[\]\\:/]+")
"""File-name glob syntax every engine reads alike: no classes, escapes, ``/``, or ``:`` (ripgrep's type-definition separator)."""


def file_name_glob(pattern: str) -> str | None:
    """A glob every match of ``pattern`` has as its file name (its last segment), when one can be told simply.

    A search program can then skip other files early; the whole pattern is still checked afterwards.
    None when the last segment holds ``**``, a ``/`` is inside braces, braces nest or do not close,
    or it uses syntax engines read differently (classes, escapes).
    """
    depth, cut = 0, -1
    for i, ch in enumerate(pattern):
        if ch == "{":
            depth += 1
            if depth > 1:
                return None
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "/":
            if depth:
                return None
            cut = i
    segment = pattern[cut + 1 :]
    if depth or not segment or "**" in segment or not _PLAIN_NAME_GLOB.fullmatch(segment):
        return None
    return segment
