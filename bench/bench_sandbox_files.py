"""ReadFile and WriteFile through gRPC, measured alternately against a raw loopback socket copy in the same run.

1. 1 MiB: WriteFile and ReadFile round trips vs a raw socket copy of 1 MiB to another process.
   Target: <= 5 ms each (absolute), ratios printed for scale.
2. 100 MB: WriteFile and ReadFile throughput vs a raw loopback TCP copy of the same bytes between
   two processes. Target: >= 0.5 of the raw throughput. Two raw baselines are shown: bytes
   only, and bytes written to a file and fsynced on arrival, which is what WriteFile promises.

Run: .venv/bin/python bench/bench_sandbox_files.py [--small-runs 100] [--large-runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sandbox_client import SandboxClient  # noqa: E402
from bench.bench_sandbox_support import (  # noqa: E402
    ClientLoop,
    host_process,
    interleave_async,
    median,
    percentiles,
    verdict,
)
from bench.common import scratch, summary  # noqa: E402
from protos.recipes import load_recipe  # noqa: E402

MIB = 1 << 20
LARGE = 100 * 1000 * 1000

# The other end of the raw copies: a process that either receives N bytes (optionally to a
# file, fsynced) or sends the file it is given, over one loopback TCP connection per copy.
_PEER = textwrap.dedent(
    """
    import os, socket, sys
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    for line in sys.stdin:
        verb, arg, size = line.split()
        size = int(size)
        conn, _ = listener.accept()
        if verb == "recv":
            out = open(arg, "wb") if arg != "-" else None
            got = 0
            while got < size:
                data = conn.recv(1 << 20)
                if not data:
                    break
                got += len(data)
                if out:
                    out.write(data)
            if out:
                out.flush(); os.fsync(out.fileno()); out.close(); os.unlink(arg)
            conn.sendall(b"k")
        else:
            with open(arg, "rb") as source:
                conn.sendfile(source)
        conn.close()
    """
)


class RawPeer:
    """A peer process for raw loopback copies."""

    def __init__(self) -> None:
        """Start the peer and learn its port."""
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def send(self, data: bytes, sink: str = "-") -> None:
        """Copy ``data`` to the peer (into file ``sink``, fsynced, when not ``-``); return once it has all of it."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"recv {sink} {len(data)}\n")
        self.process.stdin.flush()
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            conn.sendall(data)
            assert conn.recv(1) == b"k"

    def fetch(self, path: Path, size: int) -> int:
        """Have the peer send the file at ``path``; receive it into one reused buffer; return the byte count."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"send {path} {size}\n")
        self.process.stdin.flush()
        buffer = bytearray(1 << 20)
        got = 0
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            while got < size:
                n = conn.recv_into(buffer)
                if not n:
                    break
                got += n
        return got

    def close(self) -> None:
        """Stop the peer."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    """Time the transfers and their baselines; print figures, ratios and verdicts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-runs", type=int, default=100, help="timed 1 MiB transfers of each kind (default 100)")
    parser.add_argument("--large-runs", type=int, default=5, help="timed 100 MB transfers of each kind (default 5)")
    arguments = parser.parse_args()
    loop = ClientLoop()
    peer = RawPeer()
    work = scratch("files")
    small, large = os.urandom(MIB), os.urandom(LARGE)
    (work / "small.bin").write_bytes(small)
    (work / "large.bin").write_bytes(large)
    try:
        with host_process("local") as host:
            client = SandboxClient(host.target, host.token)
            sid = loop.run(client.provision(load_recipe(None))).sandbox_id
            loop.run(client.write_file(sid, "small.bin", small))
            loop.run(client.write_file(sid, "large.bin", large))

            async def write_small() -> None:
                await client.write_file(sid, "small-w.bin", small)

            async def read_small() -> None:
                assert len(await client.read_file(sid, "small.bin")) == MIB

            write_s, read_s, raw_s = loop.run(
                interleave_async([write_small, read_small, lambda: peer.send(small)], arguments.small_runs, warmup=5)
            )
            print(summary("raw loopback copy 1 MiB", raw_s, 1e-3, "ms"))
            print(summary("WriteFile 1 MiB", write_s, 1e-3, "ms"))
            print(summary("ReadFile 1 MiB", read_s, 1e-3, "ms"))
            print(percentiles("WriteFile 1 MiB", write_s))
            print(percentiles("ReadFile 1 MiB", read_s))
            print(
                f"ratios to the raw copy (p50): write {median(write_s) / median(raw_s):.2f}, read {median(read_s) / median(raw_s):.2f}"
            )
            print(verdict("WriteFile 1 MiB p50 ms", median(write_s) * 1000, 5, at_most=True))
            print(verdict("ReadFile 1 MiB p50 ms", median(read_s) * 1000, 5, at_most=True))

            async def write_large() -> None:
                await client.write_file(sid, "large-w.bin", large)

            async def read_large() -> None:
                assert len(await client.read_file(sid, "large.bin")) == LARGE

            raw_fsync = str(work / "raw-sink.bin")
            write_l, raw_l, raw_l_fsync, read_l, raw_l_read = loop.run(
                interleave_async(
                    [
                        write_large,
                        lambda: peer.send(large),
                        lambda: peer.send(large, raw_fsync),
                        read_large,
                        lambda: peer.fetch(work / "large.bin", LARGE),
                    ],
                    arguments.large_runs,
                    warmup=1,
                )
            )
            loop.run(client.close())
        rate = lambda times: LARGE / median(times) / 1e6  # noqa: E731 - MB/s at the median
        print(summary("raw loopback copy 100 MB (bytes only)", raw_l, 1e-3, "ms"))
        print(summary("raw loopback copy 100 MB (+ file, fsync)", raw_l_fsync, 1e-3, "ms"))
        print(summary("WriteFile 100 MB", write_l, 1e-3, "ms"))
        print(summary("raw loopback fetch 100 MB (bytes only)", raw_l_read, 1e-3, "ms"))
        print(summary("ReadFile 100 MB", read_l, 1e-3, "ms"))
        print(
            f"MB/s at the median: raw {rate(raw_l):.0f}, raw+fsync {rate(raw_l_fsync):.0f}, WriteFile {rate(write_l):.0f};"
            f" raw fetch {rate(raw_l_read):.0f}, ReadFile {rate(read_l):.0f}"
        )
        print(
            verdict(
                "WriteFile 100 MB throughput / raw copy (bytes only)", rate(write_l) / rate(raw_l), 0.5, at_most=False
            )
        )
        print(
            verdict(
                "WriteFile 100 MB throughput / raw copy + fsync", rate(write_l) / rate(raw_l_fsync), 0.5, at_most=False
            )
        )
        print(verdict("ReadFile 100 MB throughput / raw fetch", rate(read_l) / rate(raw_l_read), 0.5, at_most=False))
    finally:
        peer.close()
        loop.close()
        for name in ("small.bin", "large.bin"):
            (work / name).unlink(missing_ok=True)
        work.rmdir()


if __name__ == "__main__":
    main()
