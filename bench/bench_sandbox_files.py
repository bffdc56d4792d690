"""ReadFile and WriteFile through gRPC, measured alternately against baselines in the same run.

The baseline is a bare ``grpc.aio`` stream of the same bytes between two processes, in
messages of the same size as the client's (up) and the host's (down): bytes only, no
protobuf, no auth, no disk. A raw loopback TCP copy is printed beside it for scale, bytes
only and landing in a file that is fsynced (WriteFile's bytes land in a file, not fsynced);
the fsynced copies run after the timed transfers, not between them (see below).

1. 1 MiB: WriteFile and ReadFile round trips. Target: <= 5 ms p50 each (absolute).
2. 100 MB: WriteFile and ReadFile throughput. Target: >= 0.8 of the bare grpc.aio stream.

Run: .venv/bin/python bench/bench_sandbox_files.py [--small-runs 100] [--large-runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sandbox_client import CHANNEL_OPTIONS, WRITE_CHUNK, SandboxClient  # noqa: E402
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
from remote_sandbox.file_reader import READ_CHUNK  # noqa: E402

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


# The other end of the bare gRPC streams: a grpc.aio server of two methods on raw bytes (no
# (de)serialisation), Upload counts what it receives, Download streams N bytes from memory in
# messages of the given size. Channel options as the host's, so message limits are alike.
_GRPC_PEER = textwrap.dedent(
    """
    import asyncio, sys
    import grpc, grpc.aio

    async def upload(requests, context):
        got = 0
        async for data in requests:
            got += len(data)
        return str(got).encode()

    async def download(request, context):
        size, chunk = map(int, request.split())
        block = bytes(chunk)
        for start in range(0, size, chunk):
            yield block[: min(chunk, size - start)]

    async def main():
        options = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 32 << 20)]
        server = grpc.aio.server(options=options)
        handlers = {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Download": grpc.unary_stream_rpc_method_handler(download),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Bytes", handlers)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(None)

    asyncio.run(main())
    """
)


class BareGrpcPeer:
    """A peer process serving bare ``grpc.aio`` byte streams, and a channel to it."""

    def __init__(self) -> None:
        """Start the peer and learn its port (the channel is opened on the client loop, by ``open``)."""
        self.process = subprocess.Popen(
            [sys.executable, "-c", _GRPC_PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.channel: grpc.aio.Channel | None = None

    async def open(self) -> None:
        """Open the channel, with the options the sandbox client uses."""
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=CHANNEL_OPTIONS)

    async def upload(self, data: bytes, chunk: int) -> None:
        """Stream ``data`` to the peer in messages of ``chunk`` bytes; return once it has all of it."""
        assert self.channel is not None

        def messages() -> Iterator[bytes]:
            view = memoryview(data)
            for start in range(0, len(view), chunk):
                yield bytes(view[start : start + chunk])  # a copy per message, as the sandbox client makes

        got = await self.channel.stream_unary("/bench.Bytes/Upload")(messages())
        assert int(got) == len(data)

    async def download(self, size: int, chunk: int) -> int:
        """Have the peer stream ``size`` bytes in ``chunk``-byte messages; join them as ReadFile's client does."""
        assert self.channel is not None
        parts = [part async for part in self.channel.unary_stream("/bench.Bytes/Download")(f"{size} {chunk}".encode())]
        return len(b"".join(parts))

    async def close(self) -> None:
        """Close the channel and stop the peer."""
        if self.channel is not None:
            await self.channel.close()
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


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
    bare = BareGrpcPeer()
    loop.run(bare.open())
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

            write_s, bare_up_s, read_s, bare_down_s, raw_s = loop.run(
                interleave_async(
                    [
                        write_small,
                        lambda: bare.upload(small, WRITE_CHUNK),
                        read_small,
                        lambda: bare.download(MIB, READ_CHUNK),
                        lambda: peer.send(small),
                    ],
                    arguments.small_runs,
                    warmup=5,
                )
            )
            print(summary("raw loopback copy 1 MiB", raw_s, 1e-3, "ms"))
            print(summary("bare grpc.aio upload 1 MiB", bare_up_s, 1e-3, "ms"))
            print(summary("WriteFile 1 MiB", write_s, 1e-3, "ms"))
            print(summary("bare grpc.aio download 1 MiB", bare_down_s, 1e-3, "ms"))
            print(summary("ReadFile 1 MiB", read_s, 1e-3, "ms"))
            print(percentiles("WriteFile 1 MiB", write_s))
            print(percentiles("ReadFile 1 MiB", read_s))
            print(
                f"ratios (p50): to the bare grpc.aio stream: write {median(write_s) / median(bare_up_s):.2f},"
                f" read {median(read_s) / median(bare_down_s):.2f}; to the raw copy: write"
                f" {median(write_s) / median(raw_s):.2f}, read {median(read_s) / median(raw_s):.2f}"
            )
            print(verdict("WriteFile 1 MiB p50 ms", median(write_s) * 1000, 5, at_most=True))
            print(verdict("ReadFile 1 MiB p50 ms", median(read_s) * 1000, 5, at_most=True))

            async def write_large() -> None:
                await client.write_file(sid, "large-w.bin", large)

            async def read_large() -> None:
                assert len(await client.read_file(sid, "large.bin")) == LARGE

            write_l, bare_up, raw_l, read_l, bare_down, raw_l_read = loop.run(
                interleave_async(
                    [
                        write_large,
                        lambda: bare.upload(large, WRITE_CHUNK),
                        lambda: peer.send(large),
                        read_large,
                        lambda: bare.download(LARGE, READ_CHUNK),
                        lambda: peer.fetch(work / "large.bin", LARGE),
                    ],
                    arguments.large_runs,
                    warmup=1,
                )
            )
            # Apart, after the others: each of these fsyncs 100 MB and removes it, and on a file
            # system mounted with `discard` the journal commits that follow wait for the discard;
            # interleaved, that stalled the next WriteFile's page-cache writes by up to 230 ms
            # here, a cost the bench made itself. It is a figure for scale only.
            raw_fsync = str(work / "raw-sink.bin")
            (raw_l_fsync,) = loop.run(
                interleave_async([lambda: peer.send(large, raw_fsync)], arguments.large_runs, warmup=0)
            )
            loop.run(client.close())
        rate = lambda times: LARGE / median(times) / 1e6  # noqa: E731 - MB/s at the median
        print(summary("bare grpc.aio upload 100 MB", bare_up, 1e-3, "ms"))
        print(summary("raw loopback copy 100 MB (bytes only)", raw_l, 1e-3, "ms"))
        print(summary("raw loopback copy 100 MB (+ file, fsync)", raw_l_fsync, 1e-3, "ms"))
        print(summary("WriteFile 100 MB", write_l, 1e-3, "ms"))
        print(summary("bare grpc.aio download 100 MB", bare_down, 1e-3, "ms"))
        print(summary("raw loopback fetch 100 MB (bytes only)", raw_l_read, 1e-3, "ms"))
        print(summary("ReadFile 100 MB", read_l, 1e-3, "ms"))
        print(
            f"MB/s at the median: write: bare grpc {rate(bare_up):.0f}, WriteFile {rate(write_l):.0f}"
            f" (raw {rate(raw_l):.0f}, raw+fsync {rate(raw_l_fsync):.0f});"
            f" read: bare grpc {rate(bare_down):.0f}, ReadFile {rate(read_l):.0f} (raw fetch {rate(raw_l_read):.0f})"
        )
        print(f"for scale: WriteFile / raw copy {rate(write_l) / rate(raw_l):.2f}, ReadFile / raw fetch "
              f"{rate(read_l) / rate(raw_l_read):.2f}")  # fmt: skip
        print(
            verdict(
                "WriteFile 100 MB throughput / bare grpc.aio upload", rate(write_l) / rate(bare_up), 0.8, at_most=False
            )
        )
        print(
            verdict(
                "ReadFile 100 MB throughput / bare grpc.aio download",
                rate(read_l) / rate(bare_down),
                0.8,
                at_most=False,
            )
        )
    finally:
        loop.run(bare.close())
        peer.close()
        loop.close()
        for name in ("small.bin", "large.bin"):
            (work / name).unlink(missing_ok=True)
        work.rmdir()


if __name__ == "__main__":
    main()
