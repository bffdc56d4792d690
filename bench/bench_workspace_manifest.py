"""Delta Manifest of a 10,000-file workspace through gRPC, measured alternately against a bare walk in the same run.

Baseline: ``os.scandir`` + ``stat`` of every entry of the sandbox's host workspace
directory, in this process. Candidates, through the real gRPC client against a
local-provider host subprocess (as the embedded host runs):

1. ``manifest_delta(since=token)`` of the unchanged tree.
2. the same after one 10 KB file was rewritten (new content, same size).
3. a whole checkpoint (``Checkpointer.take``: delta Manifest with the session's
   ignore rules, nothing to store) of the unchanged tree. Target: <= 2x the baseline.
4. a whole checkpoint after one 10 KB file was rewritten: the Manifest, its Export
   into the project's blob store, one checkpoint event in the session log.
   Target: <= the unchanged checkpoint + 5 ms.

Run: .venv/bin/python bench/bench_workspace_manifest.py [--runs 30] [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sandbox_client import SandboxClient  # noqa: E402
from agent.workspace.checkpoints import Checkpointer, WorkspaceRules  # noqa: E402
from bench.bench_sandbox_support import ClientLoop, host_process, interleave_async, median, verdict  # noqa: E402
from bench.common import summary  # noqa: E402
from protos.recipes import load_recipe  # noqa: E402
from session.store import SessionStore  # noqa: E402

PER_DIR = 100
CHANGED_BYTES = 10 * 1000


def build_tree(root: Path, files: int) -> Path:
    """``files`` files of 1-4 KB in directories of ``PER_DIR``, plus one 10 KB file; return that file."""
    for index in range(files - 1):
        directory = root / f"pkg{index // PER_DIR:03d}"
        if index % PER_DIR == 0:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f"mod{index % PER_DIR:03d}.py").write_bytes(os.urandom(1024 + index % 3072))
    changed = root / "changed.bin"
    changed.write_bytes(os.urandom(CHANGED_BYTES))
    return changed


def bare_walk(root: str) -> int:
    """Stat everything under ``root`` with ``os.scandir``; return how many entries."""
    count = 0
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as scan:
            for entry in scan:
                st = entry.stat(follow_symlinks=False)
                count += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return count


def main() -> None:
    """Build the tree, time the walk and both deltas alternately, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each (default 30)")
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree (default 10000)")
    arguments = parser.parse_args()
    loop = ClientLoop()
    with host_process("local") as host:
        client = SandboxClient(host.target, host.token)
        sid = loop.run(client.provision(load_recipe(None))).sandbox_id
        workspace = host.state_dir / "sandboxes" / sid / "workspace"
        changed = build_tree(workspace, arguments.files)
        token = loop.run(client.manifest_delta(sid)).token
        first = [token]

        async def unchanged() -> None:
            response = await client.manifest_delta(sid, since=first[0])
            assert response.delta and not response.entries, "the tree changed under the benchmark"
            first[0] = response.token

        async def one_changed() -> None:
            changed.write_bytes(os.urandom(CHANGED_BYTES))
            response = await client.manifest_delta(sid, since=first[0])
            assert response.delta and [e.path for e in response.entries] == ["changed.bin"], response.entries
            first[0] = response.token

        store = SessionStore(home=host.state_dir.parent / "bench-store")
        log = store.create(workspace)
        keeper = Checkpointer(client, log, "copy", WorkspaceRules.for_session("copy", False, [], 50 << 20))
        assert loop.run(keeper.take(sid, label="baseline")) is not None

        async def checkpoint_unchanged() -> None:
            assert await keeper.take(sid, after="toolu_bench") is None, "the tree changed under the benchmark"

        async def checkpoint_one_changed() -> None:
            changed.write_bytes(os.urandom(CHANGED_BYTES))
            summary_ = await keeper.take(sid, after="toolu_bench")
            assert summary_ is not None and summary_.changed == 1, summary_

        assert bare_walk(str(workspace)) >= arguments.files
        # Each change is made and seen by one chain of tokens before the other chain's turn.
        walk_s, cp_changed_s, cp_same_s, changed_s, same_s = loop.run(
            interleave_async(
                [
                    lambda: bare_walk(str(workspace)),
                    checkpoint_one_changed,
                    checkpoint_unchanged,
                    one_changed,
                    unchanged,
                ],
                arguments.runs,
                warmup=3,
            )
        )
        loop.run(client.close())
        store.close()
    loop.close()
    print(summary(f"bare scandir+stat walk ({arguments.files} files)", walk_s, 1e-3, "ms"))
    print(summary("Manifest delta, unchanged", same_s, 1e-3, "ms"))
    print(summary("Manifest delta, one 10 KB file changed", changed_s, 1e-3, "ms"))
    print(summary("checkpoint, unchanged", cp_same_s, 1e-3, "ms"))
    print(summary("checkpoint, one 10 KB file changed", cp_changed_s, 1e-3, "ms"))
    print(
        f"medians: walk {median(walk_s) * 1000:.2f} ms, manifest unchanged {median(same_s) * 1000:.2f} ms, "
        f"changed {median(changed_s) * 1000:.2f} ms; checkpoint unchanged {median(cp_same_s) * 1000:.2f} ms, "
        f"changed {median(cp_changed_s) * 1000:.2f} ms"
    )
    print(verdict("manifest delta, unchanged / bare walk", median(same_s) / median(walk_s), 2, at_most=True))
    print(verdict("checkpoint, unchanged / bare walk", median(cp_same_s) / median(walk_s), 2, at_most=True))
    print(
        verdict(
            "checkpoint: one changed file costs ms more",
            (median(cp_changed_s) - median(cp_same_s)) * 1000,
            5,
            at_most=True,
        )
    )


if __name__ == "__main__":
    main()
