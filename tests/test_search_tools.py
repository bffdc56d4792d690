"""Glob and Grep on project-shaped trees, once per provider: local (ripgrep from the host's /usr) and docker (busybox, no ripgrep).

What they must agree on: ignored files stay out (root and nested ``.gitignore``,
``node_modules`` and the other default excludes, ``.git``), a path named
explicitly is searched even when ignored, and ripgrep's answers are the fallback's.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.sandbox_client import SandboxClient
from tests.fixtures.sandbox_host import RunningHost
from tests.fixtures.sandbox_tools import SandboxTools

NEEDLE = "needle"

# Every file but the .gitignore files holds the needle, so Grep and Glob must name the same kept files.
_PROJECT = {
    ".gitignore": "*.log\nsecret/\n",
    "app.py": NEEDLE,
    "debug.log": NEEDLE,
    "secret/key.py": NEEDLE,
    "sub/.gitignore": "gen/\n*.tmp\n!important.log\n",
    "sub/keep.py": NEEDLE,
    "sub/important.log": NEEDLE,
    "sub/scratch.tmp": NEEDLE,
    "sub/gen/out.py": NEEDLE,
    "node_modules/lib/index.js": NEEDLE,
    "node_modules/lib/trace.log": NEEDLE,
    "dist/bundle.js": NEEDLE,
    "pkg/__pycache__/mod.cpython-312.pyc": NEEDLE,
    ".git/config": NEEDLE,
    ".hidden.py": NEEDLE,
}
KEPT = {".gitignore", "app.py", "sub/.gitignore", "sub/keep.py", "sub/important.log", ".hidden.py"}


async def make_project(tools: SandboxTools, files: dict[str, str]) -> None:
    """Write ``files`` (relative path → text) into the workspace."""
    for path, text in files.items():
        result = await tools.call("Write", {"file_path": path, "content": text + "\n"})
        assert not result.is_error, result.content


def paths(tools: SandboxTools, content: str) -> set[str]:
    """The workspace-relative paths a Glob answer or a Grep file list names."""
    prefix = tools.workdir + "/"
    return {line[len(prefix) :] for line in content.splitlines() if line.startswith(prefix)}


async def test_ignored_files_are_not_returned(tools: SandboxTools) -> None:
    await make_project(tools, _PROJECT)

    listed = await tools.call("Glob", {"pattern": "**/*"})
    assert paths(tools, listed.content) == KEPT
    found = await tools.call("Grep", {"pattern": NEEDLE})
    assert paths(tools, found.content) == KEPT - {".gitignore", "sub/.gitignore"}
    assert found.content.splitlines()[0] == "Found 4 files"

    # Naming an ignored kind of file does not bring ignored files back (ripgrep's --glob would).
    logs = await tools.call("Glob", {"pattern": "*.log"})
    assert paths(tools, logs.content) == {"sub/important.log"}
    logs = await tools.call("Grep", {"pattern": NEEDLE, "glob": "*.{log,js}"})
    assert paths(tools, logs.content) == {"sub/important.log"}

    below = await tools.call("Grep", {"pattern": NEEDLE, "path": "sub", "output_mode": "count"})
    assert sorted(below.content.splitlines()) == [
        f"{tools.workdir}/sub/important.log:1",
        f"{tools.workdir}/sub/keep.py:1",
    ]


async def test_a_path_named_explicitly_is_searched_even_when_ignored(tools: SandboxTools) -> None:
    await make_project(tools, _PROJECT)
    w = tools.workdir

    modules = await tools.call("Grep", {"pattern": NEEDLE, "path": "node_modules/lib"})
    assert paths(tools, modules.content) == {"node_modules/lib/index.js", "node_modules/lib/trace.log"}
    scripts = await tools.call("Glob", {"pattern": "**/*.js", "path": "node_modules"})
    assert scripts.content.splitlines() == [f"{w}/node_modules/lib/index.js"]
    secret = await tools.call("Grep", {"pattern": NEEDLE, "path": "secret", "output_mode": "content"})
    assert secret.content == f"{w}/secret/key.py:1:{NEEDLE}"
    generated = await tools.call("Glob", {"pattern": "*.py", "path": "sub/gen"})
    assert generated.content == f"{w}/sub/gen/out.py"
    one = await tools.call("Grep", {"pattern": NEEDLE, "path": "debug.log", "output_mode": "content"})
    assert one.content == f"{w}/debug.log:1:{NEEDLE}"


async def test_names_with_spaces_and_unicode(tools: SandboxTools) -> None:
    await make_project(tools, {"dir with space/naïve café.py": f"x = 1\n{NEEDLE}: ok", "plain.py": "y = 2"})
    w = tools.workdir
    listed = await tools.call("Glob", {"pattern": "**/*é.py"})
    assert listed.content == f"{w}/dir with space/naïve café.py"
    found = await tools.call("Grep", {"pattern": NEEDLE, "glob": "dir with space/*.py"})
    assert found.content.splitlines() == ["Found 1 file", f"{w}/dir with space/naïve café.py"]
    content = await tools.call("Grep", {"pattern": "needle: ok", "output_mode": "content", "-B": 1})
    assert content.content.splitlines() == [
        f"{w}/dir with space/naïve café.py-1-x = 1",
        f"{w}/dir with space/naïve café.py:2:{NEEDLE}: ok",
    ]


# Calls whose answers must not depend on whether ripgrep ran them.
_SAME_EITHER_WAY: list[tuple[str, dict[str, Any]]] = [
    ("Glob", {"pattern": "**/*.py"}),
    ("Glob", {"pattern": "src/**/*.{py,md}"}),
    ("Glob", {"pattern": "*", "path": "node_modules"}),
    ("Grep", {"pattern": "value"}),
    ("Grep", {"pattern": "value", "-i": True}),
    ("Grep", {"pattern": "value", "output_mode": "count"}),
    ("Grep", {"pattern": "value", "output_mode": "content"}),
    ("Grep", {"pattern": "value", "output_mode": "content", "-n": False}),
    ("Grep", {"pattern": "return", "output_mode": "content", "-C": 1}),
    ("Grep", {"pattern": "return", "output_mode": "content", "-A": 1, "-B": 2}),
    ("Grep", {"pattern": r"= \d+$", "output_mode": "content"}),
    ("Grep", {"pattern": "value", "glob": "*.py"}),
    ("Grep", {"pattern": "value", "glob": "src/**/*.py", "output_mode": "content"}),
    ("Grep", {"pattern": "value", "type": "py", "output_mode": "count"}),
    ("Grep", {"pattern": "e", "output_mode": "content", "head_limit": 3}),
    ("Grep", {"pattern": "value", "path": "node_modules"}),
    ("Grep", {"pattern": "VALUE", "path": "lib/util.py", "output_mode": "content"}),
    ("Grep", {"pattern": "no such text"}),
]


@pytest.mark.parametrize("sandbox_host", ["local"], indirect=True)
async def test_ripgrep_and_the_fallback_give_the_same_answers(tools: SandboxTools) -> None:
    await make_project(
        tools,
        {
            ".gitignore": "*.md\n!keep.md\n",
            "src/app.py": "import os\n\ndef main():\n    return Value\n\n\nvalue = 42\nx = 1\n    return value",
            "src/pkg/deep.py": "value = 7",
            "src/keep.md": "value in notes",
            "src/skip.md": "value hidden",
            "lib/util.py": "VALUE = 1\nother\nreturn None",
            "node_modules/m/index.js": "module.value = 3",
        },
    )
    key = (tools.lease.sandbox_id, "rg")
    with_rg = [await tools.call(name, args) for name, args in _SAME_EITHER_WAY]
    assert tools.lease.programs[key].endswith("/rg"), "the local sandbox should see the host's ripgrep"
    tools.lease.programs[key] = ""  # as a sandbox without ripgrep would answer
    without = [await tools.call(name, args) for name, args in _SAME_EITHER_WAY]
    for (name, args), a, b in zip(_SAME_EITHER_WAY, with_rg, without, strict=False):
        assert (a.content, a.is_error) == (b.content, b.is_error), f"{name} {args}"
    assert "src/skip.md" not in "".join(r.content for r in with_rg)


async def test_multiline_and_unknown_types(tools: SandboxTools) -> None:
    await make_project(tools, {"a.py": "def f(\n    x,\n):\n    pass"})
    await tools.call("Grep", {"pattern": "x"})
    has_rg = bool(tools.lease.programs[(tools.lease.sandbox_id, "rg")])
    spanning = await tools.call("Grep", {"pattern": r"def f\(.*\):", "multiline": True, "output_mode": "content"})
    unknown = await tools.call("Grep", {"pattern": "x", "type": "no-such-type"})
    assert unknown.is_error and "no-such-type" in unknown.content
    if has_rg:
        assert spanning.content.splitlines() == [
            f"{tools.workdir}/a.py:1:def f(",
            f"{tools.workdir}/a.py:2:    x,",
            f"{tools.workdir}/a.py:3:):",
        ]
    else:
        assert spanning.is_error and "ripgrep" in spanning.content


async def test_ripgrep_is_looked_for_again_in_a_replacement_sandbox(
    tools: SandboxTools, sandbox_host: RunningHost
) -> None:
    await tools.call("Grep", {"pattern": NEEDLE})
    first = tools.lease.sandbox_id
    found = tools.lease.programs[(first, "rg")]
    async with SandboxClient(sandbox_host.target, sandbox_host.token) as other:
        await other.destroy(first)
    lost = await tools.call("Bash", {"command": "true"})
    await tools.lease.ready()  # the replacement runs in the background; the next call waits for it
    assert lost.is_error and tools.lease.sandbox_id != first
    assert (tools.lease.sandbox_id, "rg") not in tools.lease.programs
    await make_project(tools, {"a.txt": NEEDLE})
    again = await tools.call("Grep", {"pattern": NEEDLE})
    assert again.content.splitlines() == ["Found 1 file", f"{tools.workdir}/a.txt"]
    assert tools.lease.programs[(tools.lease.sandbox_id, "rg")] == found
