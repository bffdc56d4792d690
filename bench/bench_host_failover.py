"""Host gone silent -> next successful tool call on the second host, with a 1,000-file / 10 MB workspace restored.

Two host subprocesses, A and B; tether reaches A through a TCP proxy that can be
switched to swallow everything (a silent network: nothing is refused or reset).
A session's workspace (1,000 files, 10 MB, checkpointed into a session store)
lives in a sandbox on A. Each timed run starts a long quiet command on A,
silences the network, and measures, as the lease meets it: detect (the command's
call fails, found by keepalive), provision (a new sandbox on B from the recipe,
B's connection included), restore (the newest checkpoint into it) and the next
call (``cat`` of a restored file) succeeding on B. Printed beside it, from the
same run, alternated: a plain Provision on B.

Target (the host-loss issue): the whole <= the keepalive detection bound + 1 s.

Run: .venv/bin/python bench/bench_host_failover.py [--runs 5] [--provider local|docker]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.hosts import HostSpec  # noqa: E402
from agent.lease import SandboxLease  # noqa: E402
from agent.sandbox_client import KEEPALIVE_DETECT_S, HostUnreachable, SandboxClient  # noqa: E402
from agent.workspace.checkpoints import Checkpointer, WorkspaceRules  # noqa: E402
from bench.bench_sandbox_support import host_process, median, verdict  # noqa: E402
from bench.common import scratch, summary  # noqa: E402
from protos.recipes import load_recipe  # noqa: E402
from session.store import SessionStore  # noqa: E402

FILES = 1000
TOTAL_BYTES = 10 * 1000 * 1000


class SilentProxy:
    """A TCP proxy on 127.0.0.1 that ``silence()`` turns into a black hole (every byte swallowed, nothing closed)."""

    def __init__(self, port: int) -> None:
        """Forward to 127.0.0.1:``port``."""
        self.upstream = port
        self.silent = False
        self.server: asyncio.Server | None = None
        self.target = ""
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> SilentProxy:
        """Listen on a free port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.target = f"grpc://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def silence(self) -> None:
        """Swallow everything from now on."""
        self.silent = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        pumps = asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._connections.add(pumps)  # type: ignore[arg-type]
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await pumps
        for end in (writer, up_writer):
            end.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.silent:
                writer.write(data)
                await writer.drain()

    def close(self) -> None:
        """Stop listening and end the open connections."""
        for pumps in self._connections:
            pumps.cancel()
        if self.server is not None:
            self.server.close()


def port_of(target: str) -> int:
    """The port of ``grpc://127.0.0.1:PORT``."""
    return int(target.rsplit(":", 1)[1])


async def bench(provider: str, runs: int, work: Path, image: str) -> dict[str, list[float]]:
    """Seconds of each part per run, and of a plain Provision on B, alternated."""
    recipe = load_recipe(None)
    recipe.image = image
    recipe.idle_ttl_seconds = 0
    store = SessionStore(home=work / "store")
    parts: dict[str, list[float]] = {k: [] for k in ("detect", "provision", "restore", "next call", "total", "plain")}
    with host_process(provider, image=image) as host_a, host_process(provider, image=image) as host_b:
        direct_a = SandboxClient(host_a.target, host_a.token)
        direct_b = SandboxClient(host_b.target, host_b.token)
        log = store.create(work)
        rules = WorkspaceRules.for_session("copy", False, [], 50 << 20)
        keeper = Checkpointer(direct_a, log, "copy", rules)
        # The workspace, made once on A and checkpointed: every run restores it on B.
        seed = await direct_a.provision(recipe, request_id="seed")
        per_file = TOTAL_BYTES // FILES
        script = (
            f"for d in $(seq 0 9); do mkdir -p d$d; for f in $(seq 0 99); do "
            f"head -c {per_file} /dev/urandom > d$d/f$f.bin; done; done"
        )
        made = await direct_a.exec(seed.sandbox_id, shell=script, timeout_ms=300_000)
        assert made.exit_code == 0, made.stderr
        await keeper.take(seed.sandbox_id, label="baseline")
        assert len(keeper.state) == FILES, len(keeper.state)
        await direct_a.destroy(seed.sandbox_id)

        async def connect(spec: HostSpec, timeout: float) -> SandboxClient:
            client = SandboxClient(spec.url, spec.token)
            await client.wait_ready(timeout=timeout)
            return client

        for run in range(runs + 1):
            proxy = await SilentProxy(port_of(host_a.target)).start()
            spec_a = HostSpec(proxy.target, token=host_a.token)
            spec_b = HostSpec(host_b.target, token=host_b.token)
            client_a = await connect(spec_a, 10.0)
            lease = SandboxLease(
                client_a, host=spec_a.label, recipe=recipe, hosts=[spec_a, spec_b], spec=spec_a, connect=connect
            )
            marks: dict[str, float] = {}

            async def prepare(info, lease=lease, marks=marks) -> None:
                marks["provisioned"] = time.perf_counter()
                keeper.client = lease.client
                await keeper.restore(info.sandbox_id)

            lease.prepare = prepare
            lease.on_replace = keeper.prefetch
            await lease.ready()
            await keeper.restore(lease.sandbox_id)  # A holds the workspace, as it did before the silence
            lease.keep_standbys()  # as the harness does once its sandbox is up
            quiet = asyncio.ensure_future(lease.exec(shell="sleep 60", timeout_ms=120_000))
            await asyncio.sleep(0.5)  # the command is running on A
            began = time.perf_counter()
            proxy.silence()
            try:
                await quiet
                raise AssertionError("the command outlived the silence")
            except HostUnreachable as exc:
                detected = time.perf_counter()
                await lease.recover(str(exc), silent=exc.silent, lost=client_a)
            restored = time.perf_counter()
            result = await lease.exec(argv=["cat", "d9/f99.bin"])
            done = time.perf_counter()
            assert result.exit_code == 0 and len(result.stdout) == per_file, result
            assert lease.host == spec_b.label
            plain_began = time.perf_counter()
            extra = await direct_b.provision(recipe)
            plain = time.perf_counter() - plain_began
            await direct_b.destroy(extra.sandbox_id)
            await lease.release()
            await lease.client.close()
            for info in await direct_a.list():
                await direct_a.destroy(info.sandbox_id)
            proxy.close()
            if run:  # the first round warms up
                parts["detect"].append(detected - began)
                parts["provision"].append(marks["provisioned"] - detected)
                parts["restore"].append(restored - marks["provisioned"])
                parts["next call"].append(done - restored)
                parts["total"].append(done - began)
                parts["plain"].append(plain)
        await direct_a.close()
        await direct_b.close()
    store.close()
    return parts


def test_image() -> str:
    """The locally built test image (tests/images/build.sh prints its tag)."""
    script = Path(__file__).resolve().parent.parent / "tests" / "images" / "build.sh"
    return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    """Run, and print the parts, the baseline and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--provider", choices=("local", "docker"), default="local")
    arguments = parser.parse_args()
    work = scratch("failover")
    try:
        image = test_image() if arguments.provider == "docker" else ""
        parts = asyncio.run(bench(arguments.provider, arguments.runs, work, image))
        for name in ("detect", "provision", "restore", "next call", "total"):
            print(summary(f"{arguments.provider}: {name}", parts[name], 1e-3, "ms"))
        print(summary(f"{arguments.provider}: plain Provision on B (baseline)", parts["plain"], 1e-3, "ms"))
        after = median(parts["provision"]) + median(parts["restore"]) + median(parts["next call"])
        print(
            f"{arguments.provider}: medians: detect {median(parts['detect']):.2f} s (bound {KEEPALIVE_DETECT_S:g} s), "
            f"then provision {median(parts['provision']) * 1000:.0f} ms + restore {median(parts['restore']) * 1000:.0f} ms "
            f"+ next call {median(parts['next call']) * 1000:.0f} ms = {after * 1000:.0f} ms; "
            f"ratio of failover (after detection) to a plain Provision {after / median(parts['plain']):.2f}"
        )
        print(
            verdict(
                "silence -> next call on B, seconds", median(parts["total"]), KEEPALIVE_DETECT_S + 1.0, at_most=True
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
