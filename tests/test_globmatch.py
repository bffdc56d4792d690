"""Glob patterns as models write them."""

import pytest

from agent.globmatch import compile_glob, file_name_glob


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.py", "a.py", True),
        ("*.py", "src/deep/a.py", True),
        ("*.py", "a.pyc", False),
        ("src/*.py", "src/a.py", True),
        ("src/*.py", "src/x/a.py", False),
        ("src/**/*.py", "src/a.py", True),
        ("src/**/*.py", "src/x/y/a.py", True),
        ("src/**/*.py", "lib/a.py", False),
        ("**/test_*.py", "tests/test_x.py", True),
        ("*.{ts,tsx}", "ui/app.tsx", True),
        ("*.{ts,tsx}", "ui/app.js", False),
        ("file?.txt", "file1.txt", True),
        ("file?.txt", "file10.txt", False),
        ("[ab].c", "a.c", True),
        ("[!ab].c", "a.c", False),
        ("docs/**", "docs/x/y.md", True),
        ("a+b.txt", "a+b.txt", True),
    ],
)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    assert (compile_glob(pattern).match(path) is not None) is expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.py", "*.py"),
        ("src/**/*.{ts,tsx}", "*.{ts,tsx}"),
        ("{a,b}/x.py", "x.py"),
        ("naïve café.py", "naïve café.py"),
        ("src/**", None),
        ("{a/b,c}.py", None),
        ("*.{a,{b,c}}", None),
        ("x[ab].py", None),
        ("src/", None),
        ("c:*.py", None),
    ],
)
def test_file_name_glob(pattern: str, expected: str | None) -> None:
    assert file_name_glob(pattern) == expected
    if expected is not None:  # every path the whole pattern matches has a file name the short one matches
        for path in ("src/a/x.py", "a/x.py", "ui/app.tsx", "naïve café.py"):
            if compile_glob(pattern).match(path):
                assert compile_glob(expected).match(path.rsplit("/", 1)[-1])
