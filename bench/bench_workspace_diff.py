"""``/diff`` of a 100-file change in a 1,000-file workspace, against ``diff -ruN`` of the same trees in the same run.

A copy-mode session's workspace (1,000 source files of ~60 lines) is uploaded
into a local-provider sandbox of a host subprocess and checkpointed; then 100
files are edited in the sandbox and a tool's checkpoint records them. Timed:
what ``/diff`` does (a checkpoint of the unchanged workspace, the base and
current states from the session log, the unified diff from the blob store).
Baseline: ``diff -ruN`` of the old and new trees on local disk.
Target (absolute, from the workspace issue): <= 0.2 s.

Run: .venv/bin/python bench/bench_workspace_diff.py [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sandbox_client import SandboxClient  # noqa: E402
from agent.workspace.changes import base_state, current_state, unified_diff  # noqa: E402
from agent.workspace.checkpoints import Checkpointer, WorkspaceRules  # noqa: E402
from agent.workspace.selection import select_project_files  # noqa: E402
from agent.workspace.upload import upload_project  # noqa: E402
from bench.bench_sandbox_support import ClientLoop, host_process, median, verdict  # noqa: E402
from bench.common import scratch, summary  # noqa: E402
from protos.recipes import load_recipe  # noqa: E402
from session.checkpoints import diff_states, record_checkpoint  # noqa: E402
from session.store import SessionStore  # noqa: E402

FILES = 1000
CHANGED = 100


def source(index: int, edited: bool = False) -> str:
    """A ~60-line source file; an edited one differs in three places."""
    lines = [f"def function_{index}_{n}(value):\n    return value * {n} + {index}\n" for n in range(30)]
    if edited:
        for n in (3, 15, 27):
            lines[n] = f"def function_{index}_{n}(value):\n    return value * {n} - {index}  # edited\n"
    return "".join(lines)


def main() -> None:
    """Set up the session, time /diff and diff -ruN alternately, print medians and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    arguments = parser.parse_args()
    work = scratch("diff")
    old, new = work / "old", work / "new"
    for index in range(FILES):
        for root, edited in ((old, False), (new, index < CHANGED)):
            path = root / f"pkg{index // 100}" / f"mod{index}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source(index, edited))
    loop = ClientLoop()
    store = SessionStore(home=work / "store")
    ours: list[float] = []
    theirs: list[float] = []
    try:
        with host_process("local") as host:
            client = SandboxClient(host.target, host.token)
            sid = loop.run(client.provision(load_recipe(None))).sandbox_id
            log = store.create(old)
            selection = select_project_files(old, max_file_bytes=1 << 30, max_total_bytes=1 << 40)
            with log.blobs.batch() as batch:
                uploaded = loop.run(upload_project(client, sid, old, selection, batch))
            record_checkpoint(
                log,
                diff_states({}, uploaded.state),
                seq=0,
                after_tool_use_id=None,
                label="baseline",
                files=FILES,
                bytes=uploaded.bytes,
            )
            keeper = Checkpointer(client, log, "copy", WorkspaceRules.for_session("copy", False, [], 50 << 20))
            keeper.load()
            # The edits land in the sandbox as a tool's would: write the 100 changed files there.
            for index in range(CHANGED):
                rel = f"pkg{index // 100}/mod{index}.py"
                loop.run(client.write_file(sid, rel, source(index, True).encode()))
            summary_ = loop.run(keeper.take(sid, after="toolu_edit"))
            assert summary_ is not None and summary_.changed == CHANGED, summary_

            async def slash_diff() -> None:
                await keeper.take(sid, label="tool")
                base, _ = base_state(log)
                text = unified_diff(log, base, current_state(log))
                assert text.count("diff --git") == CHANGED, text.count("diff --git")

            for run in range(arguments.runs + 1):
                begin = time.perf_counter()
                loop.run(slash_diff())
                mine = time.perf_counter() - begin
                begin = time.perf_counter()
                proc = subprocess.run(["diff", "-ruN", str(old), str(new)], capture_output=True)
                theirs_s = time.perf_counter() - begin
                assert proc.returncode == 1
                if run:
                    ours.append(mine)
                    theirs.append(theirs_s)
            loop.run(client.close())
    finally:
        store.close()
        loop.close()
        shutil.rmtree(work, ignore_errors=True)
    print(summary(f"/diff ({CHANGED} of {FILES} files changed)", ours, 1e-3, "ms"))
    print(summary("diff -ruN of the same trees", theirs, 1e-3, "ms"))
    print(
        f"medians: /diff {median(ours) * 1000:.1f} ms, diff -ruN {median(theirs) * 1000:.1f} ms, ratio {median(ours) / median(theirs):.2f}"
    )
    print(verdict("/diff, seconds", median(ours), 0.2, at_most=True))


if __name__ == "__main__":
    main()
