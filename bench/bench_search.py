"""Grep and Glob on a project with a large node_modules, measured alternately against ripgrep run directly in the same run.

The tree: 10,000 project files and 20,000 under ``node_modules/`` (ignored by the
project's ``.gitignore``), a git repository so that plain ``rg`` honours it.

1. Grep files_with_matches and content through a real local-provider sandbox (bubblewrap,
   gRPC host subprocess) vs ``rg -l`` / ``rg -n`` on the host directory. Target: p50 ratio <= 1.5.
2. Glob ``**/*.py`` vs ``rg --files -g '*.py'`` (no order) and ``rg --files --sortr=modified -g '*.py'``
   (the same newest-first answer), for scale: Glob stats every match to sort by mtime.
3. Grep through the find/grep fallback (ripgrep hidden from the tool), for scale, a few runs.

Run: .venv/bin/python bench/bench_search.py [--runs 30] [--fallback-runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.lease import SandboxLease  # noqa: E402
from agent.sandbox_client import SandboxClient  # noqa: E402
from agent.tools.base import ToolContext  # noqa: E402
from agent.tools.search import GlobTool, GrepTool  # noqa: E402
from bench.bench_sandbox_support import ClientLoop, host_process, interleave_async, median, verdict  # noqa: E402
from bench.common import scratch, summary  # noqa: E402
from protos.recipes import load_recipe  # noqa: E402

PROJECT_FILES = 10_000
MODULE_FILES = 20_000
NEEDLE = "tether_bench_needle"


def make_tree(root: Path) -> None:
    """Write the project: 100 directories of 100 small Python files, node_modules with 200 of 100 JS files."""
    body = "".join(f"def function_{i}(value):\n    return value * {i}\n\n" for i in range(12))
    for d in range(PROJECT_FILES // 100):
        directory = root / "src" / f"pkg{d}"
        directory.mkdir(parents=True)
        for f in range(100):
            extra = f"# {NEEDLE}\n" if f == 0 and d % 10 == 0 else ""
            (directory / f"mod{f}.py").write_text(body + extra)
    for d in range(MODULE_FILES // 100):
        directory = root / "node_modules" / f"dep{d}" / "lib"
        directory.mkdir(parents=True)
        for f in range(100):
            (directory / f"index{f}.js").write_text(f"module.exports = function () {{ return '{NEEDLE}' }};\n" * 12)
    (root / ".gitignore").write_text("node_modules/\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)


def main() -> None:
    """Build the tree, start a host with it as a sandbox's base, time tool calls against rg alternately."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each contender (default 30)")
    parser.add_argument("--fallback-runs", type=int, default=5, help="timed runs of the find/grep fallback (default 5)")
    arguments = parser.parse_args()
    rg = shutil.which("rg")
    if rg is None:
        raise SystemExit("bench: ripgrep (rg) is needed on this machine")
    work = scratch("search")
    tree = work / "project"
    make_tree(tree)
    loop = ClientLoop()
    try:
        with host_process("local", extra_args=["--allow-base", str(work)]) as host:
            client = SandboxClient(host.target, host.token)
            recipe = load_recipe(None)
            recipe.base = str(tree)
            lease = SandboxLease(client, host=host.target, recipe=recipe)
            info = loop.run(lease.ready())
            print(
                f"local sandbox isolation: {info.isolation}; {PROJECT_FILES:,} project files, {MODULE_FILES:,} in node_modules"
            )

            async def quiet(stream: str, text: str) -> None:
                pass

            ctx = ToolContext(lease, "toolu_bench", quiet)
            grep, glob = GrepTool(), GlobTool()
            expected = PROJECT_FILES // 100 // 10

            async def tool_files() -> None:
                result = await grep.run(ctx, {"pattern": NEEDLE})
                assert result.content.startswith(f"Found {expected} files"), result.content[:200]

            async def tool_content() -> None:
                result = await grep.run(ctx, {"pattern": NEEDLE, "output_mode": "content"})
                assert len(result.content.splitlines()) == expected, result.content[:200]

            async def tool_glob() -> None:
                result = await glob.run(ctx, {"pattern": "**/*.py"})
                assert f"{PROJECT_FILES:,}".replace(",", "") in result.content.splitlines()[-1], result.content[-200:]

            def rg_run(*args: str, lines: int) -> None:
                out = subprocess.run([rg, *args, str(tree)], capture_output=True, check=False).stdout
                assert out.count(b"\n") == lines, out[:200]

            loop.run(tool_files())  # ripgrep is looked for once per sandbox; not part of any timed call
            assert lease.programs[(lease.sandbox_id, "rg")], "the sandbox does not see ripgrep"
            tf, bf, tc, bc, tg, bg, bs = loop.run(
                interleave_async(
                    [
                        tool_files,
                        lambda: rg_run("-l", NEEDLE, lines=expected),
                        tool_content,
                        lambda: rg_run("-n", NEEDLE, lines=expected),
                        tool_glob,
                        lambda: rg_run("--files", "-g", "*.py", lines=PROJECT_FILES),
                        lambda: rg_run("--files", "--sortr=modified", "-g", "*.py", lines=PROJECT_FILES),
                    ],
                    arguments.runs,
                    warmup=2,
                )
            )
            print(summary("rg -l (host, baseline)", bf, 1e-3, "ms"))
            print(summary("Grep files_with_matches (sandbox)", tf, 1e-3, "ms"))
            print(summary("rg -n (host, baseline)", bc, 1e-3, "ms"))
            print(summary("Grep content (sandbox)", tc, 1e-3, "ms"))
            print(summary("rg --files -g '*.py' (host, baseline)", bg, 1e-3, "ms"))
            print(summary("rg --files --sortr=modified (host, baseline)", bs, 1e-3, "ms"))
            print(summary("Glob **/*.py (sandbox, newest first)", tg, 1e-3, "ms"))
            print(f"ratios to rg (p50): Grep files {median(tf) / median(bf):.2f}, Grep content {median(tc) / median(bc):.2f}, "
                  f"Glob {median(tg) / median(bg):.2f} (unsorted rg), {median(tg) / median(bs):.2f} (rg --sortr=modified)")  # fmt: skip
            print(verdict("Grep files_with_matches p50 / rg -l p50", median(tf) / median(bf), 1.5, at_most=True))
            print(verdict("Grep content p50 / rg -n p50", median(tc) / median(bc), 1.5, at_most=True))

            lease.programs[(lease.sandbox_id, "rg")] = ""  # as a sandbox without ripgrep
            (fallback,) = loop.run(interleave_async([tool_files], arguments.fallback_runs, warmup=1))
            print(summary("Grep files_with_matches (find/grep fallback)", fallback, 1e-3, "ms"))
            print(f"fallback / rg -l (p50): {median(fallback) / median(bf):.2f}")
            loop.run(lease.release())
            loop.run(client.close())
    finally:
        loop.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
