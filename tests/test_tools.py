"""Every tool against a real sandbox host, once per provider (local under bubblewrap, docker on busybox).

Calls go through ``ToolSet.run_one``, the path the agent loop uses, so what a
test sees is what the model would see. Processes are checked from this
machine's side (``/proc`` and pidfds), which sees into both providers' sandboxes.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from agent import events as ev
from agent.permissions import PermissionGate, PermissionSettings
from agent.sandbox_client import SandboxClient
from agent.tools.base import MODEL_OUTPUT_CAP
from agent.tools.todo import TodoWriteTool
from agent.toolset import ToolCall
from tests.fixtures.processes import host_pids, open_pidfds, started_sleeps, unique_seconds, wait_exited
from tests.fixtures.sandbox_host import RunningHost
from tests.fixtures.sandbox_tools import SandboxTools

WAIT_S = 10.0
"""Bound on every wait in these tests."""


# --------------------------------------------------------------------------- Bash


async def test_bash_reports_output_stderr_and_exit_code(tools: SandboxTools) -> None:
    result = await tools.bash("echo out; echo err >&2; exit 3")
    assert result.is_error
    assert result.content.splitlines() == ["out", "err", "Exit code 3"]
    live = [(e.stream, e.text) for e in tools.events if isinstance(e, ev.ToolOutput)]
    assert ("stdout", "out\n") in live and ("stderr", "err\n") in live

    result = await tools.bash("printf 'a\\nb\\n'")
    assert not result.is_error and result.content == "a\nb"
    result = await tools.bash("true")
    assert not result.is_error and result.content == "(no output)"


async def test_bash_working_directory_persists_but_environment_does_not(tools: SandboxTools) -> None:
    await tools.ok("mkdir -p sub/deeper")
    await tools.ok("cd sub")
    assert await tools.ok("pwd") == f"{tools.workdir}/sub"
    await tools.ok("cd deeper && export TETHER_TEST_VAR=set")
    assert await tools.ok("pwd") == f"{tools.workdir}/sub/deeper"
    assert await tools.ok('echo "${TETHER_TEST_VAR:-unset}"') == "unset"
    # Relative file paths of the other tools follow the shell's directory.
    await tools.ok("echo here > f.txt")
    read = await tools.call("Read", {"file_path": "f.txt"})
    assert read.content == "     1\there"


async def test_bash_recovers_when_its_working_directory_is_removed(tools: SandboxTools) -> None:
    await tools.ok("mkdir gone && cd gone && rmdir ../gone")
    result = await tools.bash("pwd")
    assert not result.is_error, result.content
    assert result.content.splitlines()[0] == tools.workdir
    assert "no longer exists" in result.content
    assert await tools.ok("pwd") == tools.workdir


async def test_bash_timeout_kills_the_whole_process_group_and_says_so(tools: SandboxTools) -> None:
    background, foreground = unique_seconds(), unique_seconds()
    started = tools.seen_output("started")
    call = asyncio.create_task(tools.bash(f"{started_sleeps(background)}; sleep {foreground}", timeout=2000))
    await asyncio.wait_for(started.wait(), WAIT_S)
    pidfds = open_pidfds(host_pids(["sleep", background]))
    assert pidfds, "the background sleep is not visible from the host"
    result = await asyncio.wait_for(call, WAIT_S)
    assert result.is_error
    assert "timed out after 2000 ms" in result.content and "killed" in result.content
    assert result.content.startswith("started")
    await wait_exited(pidfds)
    assert host_pids(["sleep", foreground]) == []


async def test_bash_output_past_30000_characters_is_cut_for_the_model(tools: SandboxTools) -> None:
    result = await tools.bash("seq 1 20000")
    full = "".join(f"{i}\n" for i in range(1, 20001))
    assert not result.is_error
    assert result.full_output == full.encode()
    assert len(result.content) < MODEL_OUTPUT_CAP + 500
    assert result.content.startswith("1\n2\n3\n")
    assert result.content.endswith("19999\n20000")
    assert f"{len(full):,}" in result.content, "the model is told how big the output was"


async def test_bash_output_past_the_stream_cap_goes_to_a_spill_file(tools: SandboxTools) -> None:
    result = await tools.bash("head -c 2000000 /dev/zero | tr '\\0' a; echo; echo tail-of-stderr >&2")
    assert not result.is_error
    match = re.search(r"(/\S+\.log)", result.content)
    assert match, result.content
    assert "2,000,016 bytes" in result.content
    assert "1,048,576 bytes in all" not in result.content, "the size said must be the real one"
    assert len(result.content) < MODEL_OUTPUT_CAP + 1000
    spilled = await tools.lease.client.read_file(tools.lease.sandbox_id, match.group(1))
    assert len(spilled) == 2_000_016
    assert spilled.startswith(b"a" * 2_000_000) and b"tail-of-stderr\n" in spilled
    # The model can read the spill file itself, as it is told to.
    read = await tools.call("Read", {"file_path": match.group(1), "limit": 1})
    assert not read.is_error and read.content.startswith("     1\taaaa")


async def test_bash_rejects_bad_timeouts(tools: SandboxTools) -> None:
    for timeout in (0, -5, 0.5, 600_001, "10", True):
        result = await tools.bash("echo ran", timeout=timeout)
        assert result.is_error, timeout
        assert "timeout" in result.content and "ran" not in result.content, (timeout, result.content)
    assert (await tools.bash("echo ran", timeout=600_000)).content == "ran"
    assert (await tools.bash("echo ran", timeout=None)).content == "ran", "null is the default"


# --------------------------------------------------------------------------- Read


async def test_read_numbers_lines_like_cat_n_with_offset_and_limit(tools: SandboxTools) -> None:
    await tools.ok("seq 1 2500 | sed 's/^/line /' > many.txt; printf 'a\\fb\\nsecond\\n' > ff.txt")
    await tools.ok('awk \'BEGIN { s = ""; for (i = 0; i < 2100; i++) s = s "x"; print "short"; print s }\' > wide.txt')

    first = await tools.call("Read", {"file_path": f"{tools.workdir}/many.txt"})
    lines = first.content.splitlines()
    assert lines[0] == "     1\tline 1"
    assert lines[1999] == "  2000\tline 2000"
    assert "500 more lines" in first.content and "offset=2001" in first.content
    assert (await tools.ok("cat -n many.txt | head -3")).splitlines() == lines[:3]

    window = await tools.call("Read", {"file_path": "many.txt", "offset": 2498, "limit": 2})
    assert window.content.splitlines()[:2] == ["  2498\tline 2498", "  2499\tline 2499"]
    last = await tools.call("Read", {"file_path": "many.txt", "offset": 2500})
    assert last.content == "  2500\tline 2500"

    wide = await tools.call("Read", {"file_path": "wide.txt"})
    short, cut = wide.content.splitlines()
    assert short == "     1\tshort"
    assert cut.startswith("     2\t" + "x" * 2000) and "x" * 2001 not in cut and "cut" in cut

    # Line numbers agree with grep -n and cat -n: only \n ends a line.
    ff = await tools.call("Read", {"file_path": "ff.txt"})
    assert ff.content.splitlines()[-1] == "     2\tsecond"
    grep = await tools.call("Grep", {"pattern": "second", "path": "ff.txt", "output_mode": "content"})
    assert grep.content.endswith(":2:second")


async def test_read_error_paths(tools: SandboxTools) -> None:
    await tools.ok("mkdir adir; : > empty.txt; printf 'x\\0y' > blob.bin; printf 'one\\ntwo\\n' > two.txt")

    empty = await tools.call("Read", {"file_path": "empty.txt"})
    assert not empty.is_error and "empty" in empty.content

    missing = await tools.call("Read", {"file_path": "nope.txt"})
    assert missing.is_error and "does not exist" in missing.content and f"{tools.workdir}/nope.txt" in missing.content

    directory = await tools.call("Read", {"file_path": "adir"})
    assert directory.is_error and "directory" in directory.content

    binary = await tools.call("Read", {"file_path": "blob.bin"})
    assert binary.is_error and "binary" in binary.content and "\0" not in binary.content

    past = await tools.call("Read", {"file_path": "two.txt", "offset": 3})
    assert past.is_error and "2 lines" in past.content and "offset 3" in past.content

    for bad in ({"offset": 0}, {"limit": -1}, {"offset": 1.5}, {"limit": "10"}):
        result = await tools.call("Read", {"file_path": "two.txt", **bad})
        assert result.is_error and next(iter(bad)) in result.content, (bad, result.content)


# --------------------------------------------------------------------------- Write and Edit


async def test_write_creates_files_and_refuses_blind_overwrites(tools: SandboxTools) -> None:
    created = await tools.call("Write", {"file_path": "new/deep/file.txt", "content": "v1\n"})
    assert not created.is_error and "created" in created.content, created.content
    assert await tools.ok("cat new/deep/file.txt") == "v1"

    # Writing a file the tool created counts as knowing it.
    again = await tools.call("Write", {"file_path": "new/deep/file.txt", "content": "v2\n"})
    assert not again.is_error and "updated" in again.content

    await tools.ok("printf '#!/bin/sh\\necho old\\n' > run.sh && chmod 755 run.sh")
    refused = await tools.call("Write", {"file_path": "run.sh", "content": "#!/bin/sh\necho new\n"})
    assert refused.is_error and "Read it first" in refused.content
    assert await tools.ok("./run.sh") == "old"

    await tools.call("Read", {"file_path": "run.sh"})
    allowed = await tools.call("Write", {"file_path": "run.sh", "content": "#!/bin/sh\necho new\n"})
    assert not allowed.is_error, allowed.content
    assert await tools.ok("./run.sh") == "new", "Write keeps the file's mode"

    onto_dir = await tools.call("Write", {"file_path": "new", "content": "x"})
    assert onto_dir.is_error and "directory" in onto_dir.content


async def test_a_write_is_shown_as_a_diff_against_the_file_in_the_sandbox(tools: SandboxTools) -> None:
    await tools.ok("printf 'one\\ntwo\\nthree\\n' > w.txt && printf 'a\\000b' > blob.bin")

    def started(path: str):  # type: ignore[no-untyped-def]
        return [e.view for e in tools.events if isinstance(e, ev.ToolStarted) and e.input.get("file_path") == path][-1]

    await tools.call("Write", {"file_path": "w.txt", "content": "one\n2\nthree\n"})
    view = started("w.txt")
    assert view.kind == "diff" and view.path == f"{tools.workdir}/w.txt"
    assert "-two\n+2\n" in view.text and " one\n" in view.text and "+one" not in view.text, view.text
    await tools.call("Write", {"file_path": "fresh.txt", "content": "x\ny\n"})
    assert "+x\n+y\n" in started("fresh.txt").text
    await tools.call("Write", {"file_path": "blob.bin", "content": "text now\n"})
    binary = started("blob.bin").text
    assert "+text now" in binary and "\n-" not in binary, "a binary file is not diffed: the new content shows as added"


async def test_edit_replaces_exactly_and_explains_every_refusal(tools: SandboxTools) -> None:
    await tools.ok("printf 'alpha\\nbeta\\nbeta\\ngamma\\n' > e.txt")
    path = f"{tools.workdir}/e.txt"

    not_read = await tools.call("Edit", {"file_path": path, "old_string": "alpha", "new_string": "ALPHA"})
    assert not_read.is_error and "Read it first" in not_read.content
    await tools.call("Read", {"file_path": path})

    unique = await tools.call("Edit", {"file_path": path, "old_string": "alpha", "new_string": "ALPHA"})
    assert not unique.is_error, unique.content
    assert await tools.ok("cat e.txt") == "ALPHA\nbeta\nbeta\ngamma"

    absent = await tools.call("Edit", {"file_path": path, "old_string": "delta", "new_string": "x"})
    assert absent.is_error and "not found" in absent.content

    several = await tools.call("Edit", {"file_path": path, "old_string": "beta", "new_string": "BETA"})
    assert several.is_error and "2 times" in several.content and "replace_all" in several.content
    assert await tools.ok("cat e.txt") == "ALPHA\nbeta\nbeta\ngamma"

    every = await tools.call(
        "Edit", {"file_path": path, "old_string": "beta", "new_string": "BETA", "replace_all": True}
    )
    assert not every.is_error and "2 occurrences" in every.content
    assert await tools.ok("cat e.txt") == "ALPHA\nBETA\nBETA\ngamma"

    noop = await tools.call("Edit", {"file_path": path, "old_string": "gamma", "new_string": "gamma"})
    assert noop.is_error and "same" in noop.content

    missing = await tools.call("Edit", {"file_path": "missing.txt", "old_string": "a", "new_string": "b"})
    assert missing.is_error and "does not exist" in missing.content


async def test_edit_keeps_bytes_it_does_not_touch(tools: SandboxTools) -> None:
    # A Latin-1 file: Edit must change only what it was asked to, not turn the é into U+FFFD.
    await tools.ok("printf 'caf\\351 = 1\\nx = 2\\n' > latin1.py && chmod 700 latin1.py")
    await tools.call("Read", {"file_path": "latin1.py"})
    result = await tools.call("Edit", {"file_path": "latin1.py", "old_string": "x = 2", "new_string": "x = 3"})
    assert not result.is_error, result.content
    data = await tools.lease.client.read_file(tools.lease.sandbox_id, f"{tools.workdir}/latin1.py")
    assert data == b"caf\xe9 = 1\nx = 3\n"
    assert await tools.ok("stat -c %a latin1.py") == "700"


# --------------------------------------------------------------------------- Glob


async def test_glob_matches_patterns_newest_first_and_skips_git(tools: SandboxTools) -> None:
    await tools.ok(
        "mkdir -p src/pkg ui .git/objects && "
        "touch -d @1000000000 old.py && touch -d @1500000000 src/pkg/mid.py && touch -d @1700000000 src/new.py && "
        "touch ui/app.ts ui/app.tsx ui/app.js .git/objects/hook.py 'with space.py'"
    )
    w = tools.workdir
    result = await tools.call("Glob", {"pattern": "**/*.py"})
    files = result.content.splitlines()
    assert files[-3:] == [f"{w}/src/new.py", f"{w}/src/pkg/mid.py", f"{w}/old.py"]
    assert set(files) == {f"{w}/with space.py", f"{w}/src/new.py", f"{w}/src/pkg/mid.py", f"{w}/old.py"}

    braces = await tools.call("Glob", {"pattern": "ui/*.{ts,tsx}"})
    assert sorted(braces.content.splitlines()) == [f"{w}/ui/app.ts", f"{w}/ui/app.tsx"]

    under = await tools.call("Glob", {"pattern": "*.py", "path": "src"})
    assert under.content.splitlines() == [f"{w}/src/new.py", f"{w}/src/pkg/mid.py"]

    none = await tools.call("Glob", {"pattern": "**/*.rs"})
    assert not none.is_error and none.content == "No files found"

    missing = await tools.call("Glob", {"pattern": "*.py", "path": "no-such-dir"})
    assert missing.is_error and "does not exist" in missing.content


async def test_glob_caps_results_at_100(tools: SandboxTools) -> None:
    await tools.ok("mkdir many && i=0; while [ $i -lt 130 ]; do : > many/f$i.txt; i=$((i+1)); done")
    result = await tools.call("Glob", {"pattern": "many/*.txt"})
    lines = result.content.splitlines()
    assert len([line for line in lines if line.endswith(".txt")]) == 100, result.content
    assert "130 files matched" in lines[-1]


# --------------------------------------------------------------------------- Grep


async def _grep_tree(tools: SandboxTools) -> None:
    await tools.ok(
        "mkdir -p src lib .git && "
        "printf 'import os\\n\\ndef main():\\n    return Value\\n\\nvalue = 42\\n' > src/app.py && "
        "printf 'VALUE = 1\\nother\\n' > lib/util.py && "
        "printf 'value in notes\\n' > notes.md && "
        "printf 'value hidden\\n' > .git/config"
    )


async def test_grep_output_modes_and_options(tools: SandboxTools) -> None:
    await _grep_tree(tools)
    w = tools.workdir

    files = await tools.call("Grep", {"pattern": "value"})
    assert files.content.splitlines() == ["Found 2 files", f"{w}/notes.md", f"{w}/src/app.py"]

    insensitive = await tools.call("Grep", {"pattern": "value", "-i": True, "glob": "*.py"})
    assert insensitive.content.splitlines() == ["Found 2 files", f"{w}/lib/util.py", f"{w}/src/app.py"]

    content = await tools.call("Grep", {"pattern": "return", "output_mode": "content", "-C": 1, "path": "src"})
    assert content.content.splitlines() == [
        f"{w}/src/app.py-3-def main():",
        f"{w}/src/app.py:4:    return Value",
        f"{w}/src/app.py-5-",
    ]
    bare = await tools.call("Grep", {"pattern": "return", "output_mode": "content", "-n": False, "path": "src"})
    assert bare.content == f"{w}/src/app.py:    return Value"

    count = await tools.call("Grep", {"pattern": "value", "output_mode": "count", "-i": True})
    assert sorted(count.content.splitlines()) == [f"{w}/lib/util.py:1", f"{w}/notes.md:1", f"{w}/src/app.py:2"]

    limited = await tools.call("Grep", {"pattern": "e", "output_mode": "content", "head_limit": 2})
    assert len(limited.content.splitlines()[:2]) == 2 and "more lines" in limited.content

    digits = await tools.call("Grep", {"pattern": r"= \d+$", "output_mode": "content"})
    assert sorted(digits.content.splitlines()) == [f"{w}/lib/util.py:1:VALUE = 1", f"{w}/src/app.py:6:value = 42"]


async def test_grep_errors_and_edges(tools: SandboxTools) -> None:
    await _grep_tree(tools)
    w = tools.workdir

    nothing = await tools.call("Grep", {"pattern": "no such text anywhere"})
    assert not nothing.is_error and nothing.content == "No files found"
    nothing = await tools.call("Grep", {"pattern": "no such text", "output_mode": "content"})
    assert not nothing.is_error and nothing.content == "No matches found"

    bad = await tools.call("Grep", {"pattern": "(unclosed", "output_mode": "content"})
    assert bad.is_error and "grep" in bad.content.lower()

    single = await tools.call("Grep", {"pattern": "VALUE", "path": "lib/util.py", "output_mode": "content"})
    assert single.content == f"{w}/lib/util.py:1:VALUE = 1"
    single_none = await tools.call("Grep", {"pattern": "zzz", "path": "lib/util.py"})
    assert not single_none.is_error and single_none.content == "No files found"

    dash = await tools.call("Grep", {"pattern": "-v", "path": "notes.md"})
    assert not dash.is_error and dash.content == "No files found"

    missing = await tools.call("Grep", {"pattern": "x", "path": "no-such"})
    assert missing.is_error and "does not exist" in missing.content

    bad_mode = await tools.call("Grep", {"pattern": "x", "output_mode": "lines"})
    assert bad_mode.is_error and "output_mode" in bad_mode.content


# --------------------------------------------------------------------------- calls the model got wrong, TodoWrite


async def test_todowrite_stores_a_valid_list_and_rejects_a_bad_one(tools: SandboxTools) -> None:
    todo = next(t for t in tools.toolset.tools if isinstance(t, TodoWriteTool))
    todos = [
        {"content": "Write tests", "status": "completed", "activeForm": "Writing tests"},
        {"content": "Fix bugs", "status": "in_progress", "activeForm": "Fixing bugs"},
    ]
    result = await tools.call("TodoWrite", {"todos": todos})
    assert not result.is_error
    assert todo.todos == todos

    bad = await tools.call("TodoWrite", {"todos": [{"content": "x", "status": "done"}]})
    assert bad.is_error and "status" in bad.content and "pending" in bad.content
    assert todo.todos == todos, "a rejected list leaves the old one"


async def test_unknown_tools_and_inputs_off_the_schema_are_errors_for_the_model(tools: SandboxTools) -> None:
    tools.toolset.gate = PermissionGate("default", PermissionSettings(), Path("/nonexistent"), lambda: tools.workdir)
    unknown = await tools.call("Frobnicate", {})
    assert unknown.is_error and "No such tool: Frobnicate" in unknown.content and "Bash" in unknown.content

    missing = await tools.call("Bash", {"description": "no command"})
    assert missing.is_error and "`command`" in missing.content and "required" in missing.content.lower()

    wrong_type = await tools.call("Read", {"file_path": 7})
    assert wrong_type.is_error and "`file_path`" in wrong_type.content and "string" in wrong_type.content

    extra = await tools.call("Read", {"file_path": "x", "path": "y"})
    assert extra.is_error and "`path`" in extra.content

    not_object = await tools.call("Read", ["file_path"])  # type: ignore[arg-type]
    assert not_object.is_error and "object" in not_object.content

    finished = [e for e in tools.events if isinstance(e, ev.ToolFinished)]
    assert len(finished) == 5 and all(e.is_error for e in finished)
    # Refused before the permission check: nobody is asked to approve a call that cannot run.
    assert not any(isinstance(e, ev.PermissionRequest) for e in tools.events)


async def test_paths_outside_the_workspace_are_refused(tools: SandboxTools) -> None:
    await tools.ok("mkdir -p a/b")
    await tools.ok("cd a/b")
    calls = [
        ("Read", {"file_path": "../../../etc/passwd"}),
        ("Read", {"file_path": "/etc/passwd"}),
        ("Write", {"file_path": "/etc/tether-test", "content": "x"}),
        ("Edit", {"file_path": "/etc/passwd", "old_string": "root", "new_string": "toor"}),
        ("Grep", {"pattern": "root", "path": "/etc/passwd"}),
        ("Grep", {"pattern": "root", "path": "/etc"}),
        ("Glob", {"pattern": "*", "path": "/etc"}),
    ]
    for name, args in calls:
        result = await tools.call(name, args)
        assert result.is_error, (name, args, result.content)
        assert "outside the workspace" in result.content, (name, args, result.content)


# --------------------------------------------------------------------------- batches and sandbox loss


async def test_read_only_calls_run_concurrently_and_results_keep_the_call_order(tools: SandboxTools) -> None:
    await tools.ok("echo one > one.txt; echo two > two.txt; echo three > three.txt")
    tools.events.clear()
    calls = [
        ToolCall("r1", "Read", {"file_path": "one.txt"}),
        ToolCall("g1", "Grep", {"pattern": "two"}),
        ToolCall("r2", "Read", {"file_path": "three.txt"}),
        ToolCall("b1", "Bash", {"command": "echo bash"}),
        ToolCall("r3", "Read", {"file_path": "two.txt"}),
        ToolCall("g2", "Glob", {"pattern": "*.txt"}),
    ]
    results = await tools.toolset.run_all(calls, tools.emit)
    assert [r.content for r in results][:4] == [
        "     1\tone",
        f"Found 1 file\n{tools.workdir}/two.txt",
        "     1\tthree",
        "bash",
    ]
    assert results[4].content == "     1\ttwo"
    assert results[5].content.count(".txt") == 3

    order = [(type(e).__name__, e.tool_use_id) for e in tools.events if isinstance(e, ev.ToolStarted | ev.ToolFinished)]
    position = {entry: i for i, entry in enumerate(order)}

    def started(i: str) -> int:
        return position[("ToolStarted", i)]

    def finished(i: str) -> int:
        return position[("ToolFinished", i)]

    # The first three are read-only: all start before any finishes.
    assert max(started(i) for i in ("r1", "g1", "r2")) < min(finished(i) for i in ("r1", "g1", "r2"))
    # Bash runs alone, after them and before the next run of read-only calls.
    assert (
        max(finished(i) for i in ("r1", "g1", "r2"))
        < started("b1")
        < finished("b1")
        < min(started("r3"), started("g2"))
    )
    assert max(started(i) for i in ("r3", "g2")) < min(finished(i) for i in ("r3", "g2"))


async def test_a_sandbox_destroyed_behind_the_harness_is_replaced(
    tools: SandboxTools, sandbox_host: RunningHost
) -> None:
    await tools.ok("echo before > f.txt")
    changes: list[tuple[str, dict]] = []
    tools.lease.on_change = lambda event, payload: changes.append((event, payload))
    lost_id = tools.lease.sandbox_id
    async with SandboxClient(sandbox_host.target, sandbox_host.token) as other:
        await other.destroy(lost_id)
    result = await tools.call("Bash", {"command": "echo after"})
    assert result.is_error
    assert "sandbox was lost" in result.content and "may or may not have taken effect" in result.content
    assert "new sandbox is being started" in result.content and "starts fresh" in result.content
    # The replacement runs in the background while the model reads the error; the next call waits for it.
    await tools.lease.ready()
    assert tools.lease.sandbox_id != lost_id and tools.lease.generation == 2
    assert [event for event, _ in changes] == ["lost", "reprovisioned"]
    assert changes[0][1]["sandbox_id"] == lost_id and changes[1][1]["replaces"] == lost_id
    # The new sandbox works, and it is a fresh one: the old workspace is gone.
    assert (await tools.ok("echo after")).strip() == "after"
    missing = await tools.call("Read", {"file_path": "f.txt"})
    assert missing.is_error and "does not exist" in missing.content
    statuses = [e.message for e in tools.events if isinstance(e, ev.Status)]
    assert any("starting a new one" in m for m in statuses)
