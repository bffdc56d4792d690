"""Sandbox death -> next successful tool call, with a 1,000-file / 10 MB workspace restored.

For each provider, a session's workspace (1,000 files, 10 MB, checkpointed into a
session store) lives in a sandbox of a host subprocess. Each timed run destroys
the sandbox behind the harness's back, then measures, as a tool call meets it:
the call that finds the sandbox gone, the replacement from the same recipe, the
restore of the newest checkpoint, and the next call (``cat`` of a restored file)
succeeding. Printed beside it, measured alternately in the same run: a plain
Provision on the same host, the isolation's own start (``docker run`` of the
test image through docker-py, or ``bwrap ... true``), and ``tar x`` of the same
files into a fresh directory (what the disk allows).

Targets (absolute, from the workspace issue): docker <= 1.0 s, local <= 0.3 s.

Run: .venv/bin/python bench/bench_workspace_restore.py [--runs 10] [--provider local|docker|both]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.lease import SandboxLease  # noqa: E402
from agent.sandbox_client import SandboxClient, SandboxGone  # noqa: E402
from agent.workspace.checkpoints import Checkpointer, WorkspaceRules, tar_of_state  # noqa: E402
from bench.bench_sandbox_support import ClientLoop, host_process, median, verdict  # noqa: E402
from bench.common import scratch, summary  # noqa: E402
from protos.recipes import load_recipe  # noqa: E402
from session.store import SessionStore  # noqa: E402

FILES = 1000
TOTAL_BYTES = 10 * 1000 * 1000
TARGETS_S = {"local": 0.3, "docker": 1.0}


def test_image() -> str:
    """The locally built test image (tests/images/build.sh prints its tag)."""
    script = Path(__file__).resolve().parent.parent / "tests" / "images" / "build.sh"
    return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout.strip()


def isolation_start(provider: str, image: str):
    """A callable that starts (and ends) the bare isolation once: the floor under a new sandbox."""
    if provider == "local":
        bwrap = shutil.which("bwrap") or "bwrap"
        return lambda: subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "true"], check=True)
    import docker

    engine = docker.from_env()
    return lambda: engine.containers.run(image, ["true"], remove=True, network_disabled=True)


def bench(provider: str, runs: int, work: Path) -> tuple[list[float], list[float], list[float], list[float]]:
    """(death -> next call, plain Provision, isolation start, tar x) in seconds, alternated."""
    image = test_image() if provider == "docker" else ""
    recipe = load_recipe(None)
    recipe.image = image
    loop = ClientLoop()
    store = SessionStore(home=work / f"store-{provider}")
    died: list[float] = []
    provisioned: list[float] = []
    isolated: list[float] = []
    untarred: list[float] = []
    start_isolation = isolation_start(provider, image)
    with host_process(provider, image=image) as host:
        client = SandboxClient(host.target, host.token)
        log = store.create(work)
        keeper = Checkpointer(client, log, "copy", WorkspaceRules.for_session("copy", False, [], 50 << 20))
        lease = SandboxLease(client, host=host.target, recipe=recipe)

        async def prepare(info) -> None:
            await keeper.restore(info.sandbox_id)

        lease.prepare = prepare
        lease.on_replace = keeper.prefetch  # as a session's workspace wires it
        sid = loop.run(lease.ready()).sandbox_id
        per_file = TOTAL_BYTES // FILES
        script = (
            f"for d in $(seq 0 9); do mkdir -p d$d; for f in $(seq 0 99); do "
            f"head -c {per_file} /dev/urandom > d$d/f$f.bin; done; done"
        )
        made = loop.run(client.exec(sid, shell=script, timeout_ms=300_000))
        assert made.exit_code == 0, made.stderr
        assert loop.run(keeper.take(sid, label="baseline")) is not None
        assert len(keeper.state) == FILES, len(keeper.state)
        tar_file = work / f"workspace-{provider}.tar"
        tar_file.write_bytes(b"".join(tar_of_state(keeper.state, log, [])))

        def untar() -> None:
            target = work / "untarred"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            subprocess.run(["tar", "xf", str(tar_file), "-C", str(target)], check=True)

        async def death_to_next_call() -> None:
            lost = lease.sandbox_id
            await client.destroy(lost)  # as a dead container or a reaped sandbox looks to the harness
            try:
                await client.exec(lost, argv=["true"])
                raise AssertionError("the destroyed sandbox still answered")
            except SandboxGone:
                pass
            lease.begin_replace("bench", lost)
            info = await lease.ready()
            result = await client.exec(info.sandbox_id, argv=["cat", "d9/f99.bin"])
            assert result.exit_code == 0 and len(result.stdout) == per_file

        async def plain_provision() -> None:
            info = await client.provision(recipe)
            provisioned_ids.append(info.sandbox_id)

        provisioned_ids: list[str] = []
        for run in range(runs + 1):
            timings = []
            for step in (death_to_next_call, plain_provision, start_isolation, untar):
                begin = time.perf_counter()
                result = step()
                if hasattr(result, "__await__"):
                    loop.run(result)
                timings.append(time.perf_counter() - begin)
            for extra in provisioned_ids:
                loop.run(client.destroy(extra))
            provisioned_ids.clear()
            if run:  # the first round warms up
                died.append(timings[0])
                provisioned.append(timings[1])
                isolated.append(timings[2])
                untarred.append(timings[3])
        loop.run(lease.release())
        loop.run(client.close())
    store.close()
    loop.close()
    return died, provisioned, isolated, untarred


def main() -> None:
    """Run the chosen providers and print medians, the parts beside it, and the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--provider", choices=("local", "docker", "both"), default="both")
    arguments = parser.parse_args()
    work = scratch("restore")
    try:
        for provider in ("local", "docker") if arguments.provider == "both" else (arguments.provider,):
            died, provisioned, isolated, untarred = bench(provider, arguments.runs, work)
            print(summary(f"{provider}: death -> next call ({FILES} files restored)", died, 1e-3, "ms"))
            print(summary(f"{provider}: plain Provision", provisioned, 1e-3, "ms"))
            floor = "docker run true" if provider == "docker" else "bwrap true"
            print(summary(f"{provider}: {floor}", isolated, 1e-3, "ms"))
            print(summary(f"{provider}: tar x of the same files", untarred, 1e-3, "ms"))
            print(
                f"{provider}: medians: death -> next call {median(died) * 1000:.0f} ms, provision "
                f"{median(provisioned) * 1000:.0f} ms, {floor} {median(isolated) * 1000:.0f} ms, "
                f"tar x {median(untarred) * 1000:.0f} ms; "
                f"ratio to provision {median(died) / median(provisioned):.2f}"
            )
            print(verdict(f"{provider}: death -> next call, seconds", median(died), TARGETS_S[provider], at_most=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
