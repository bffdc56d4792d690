"""Uploading a 10,000-file / 100 MB project through Import, measured alternately against ``tar c | tar x`` in the same run.

Baseline: ``tar c`` in one process writes the tree to a loopback TCP socket, ``tar x``
in another unpacks it into a fresh directory. Candidate: what a copy-mode session
does at start: choose the project's files (``select_project_files``) and upload
them (``upload_project``: one tar stream into ``Import`` over the real gRPC client,
into a fresh local-provider sandbox of a host subprocess, each file also stored in
an empty blob store, made durable before the baseline is logged). Each run unpacks
into a new, empty place; making it is not timed. Target: <= 2x.

Run: .venv/bin/python bench/bench_workspace_upload.py [--runs 5] [--files 10000] [--megabytes 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sandbox_client import SandboxClient  # noqa: E402
from agent.workspace.selection import select_project_files  # noqa: E402
from agent.workspace.upload import upload_project  # noqa: E402
from bench.bench_sandbox_support import ClientLoop, host_process, median, verdict  # noqa: E402
from bench.common import scratch, summary  # noqa: E402
from protos.recipes import load_recipe  # noqa: E402
from session.blobs import BlobStore  # noqa: E402

PER_DIR = 100

# Both ends exec tar with the socket as stdin or stdout: nothing but tar touches the bytes.
_RECEIVER = textwrap.dedent(
    """
    import os, socket, sys
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    os.dup2(conn.fileno(), 0)
    os.execvp("tar", ["tar", "x", "-C", sys.argv[1]])
    """
)
_SENDER = textwrap.dedent(
    """
    import os, socket, sys
    conn = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    os.dup2(conn.fileno(), 1)
    os.execvp("tar", ["tar", "c", "-C", sys.argv[1], "."])
    """
)


def build_tree(root: Path, files: int, total_bytes: int) -> None:
    """``files`` files of random bytes, ``total_bytes`` in all, in directories of ``PER_DIR``."""
    size = total_bytes // files
    block = os.urandom(size * 2)
    for index in range(files):
        directory = root / f"pkg{index // PER_DIR:03d}"
        if index % PER_DIR == 0:
            directory.mkdir(parents=True, exist_ok=True)
        offset = index % size
        (directory / f"mod{index % PER_DIR:03d}.bin").write_bytes(block[offset : offset + size])


def tar_over_socket(source: Path, target: Path) -> None:
    """``tar c`` | loopback TCP | ``tar x`` between two processes."""
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(target)], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    port = receiver.stdout.readline().strip()
    sender = subprocess.run([sys.executable, "-c", _SENDER, str(source), port], check=True)
    assert sender.returncode == 0
    if receiver.wait() != 0:
        raise SystemExit("bench: tar x failed")


def main() -> None:
    """Build the tree, time both uploads alternately, print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed uploads of each kind (default 5)")
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree (default 10000)")
    parser.add_argument("--megabytes", type=int, default=100, help="bytes in all, in MB (default 100)")
    arguments = parser.parse_args()
    work = scratch("upload")
    source = work / "project"
    build_tree(source, arguments.files, arguments.megabytes * 1000 * 1000)
    loop = ClientLoop()
    tar_s: list[float] = []
    import_s: list[float] = []
    try:
        with host_process("local") as host:
            client = SandboxClient(host.target, host.token)
            for run in range(arguments.runs + 1):  # the first of each is a warm-up
                target = work / "unpacked"
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                start = time.perf_counter()
                tar_over_socket(source, target)
                baseline = time.perf_counter() - start
                sid = loop.run(client.provision(load_recipe(None))).sandbox_id
                blobs = BlobStore(work / f"blobs-{run}")
                start = time.perf_counter()
                selection = select_project_files(source, max_file_bytes=1 << 30, max_total_bytes=1 << 40)
                with blobs.batch() as batch:
                    result = loop.run(upload_project(client, sid, source, selection, batch))
                candidate = time.perf_counter() - start
                assert result.files == arguments.files, result.files
                loop.run(client.destroy(sid))
                shutil.rmtree(blobs.root)
                if run:
                    tar_s.append(baseline)
                    import_s.append(candidate)
            loop.run(client.close())
    finally:
        loop.close()
        shutil.rmtree(work, ignore_errors=True)
    label = f"{arguments.files} files / {arguments.megabytes} MB"
    print(summary(f"tar c | tcp | tar x ({label})", tar_s, 1e-3, "ms"))
    print(summary(f"select + upload + blobs ({label})", import_s, 1e-3, "ms"))
    print(f"medians: tar {median(tar_s) * 1000:.0f} ms, upload {median(import_s) * 1000:.0f} ms")
    print(verdict("upload / tar c | tar x", median(import_s) / median(tar_s), 2, at_most=True))


if __name__ == "__main__":
    main()
