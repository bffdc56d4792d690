"""The sandbox host under pressure: its limits, malformed requests, a flood of output, many clients, crashes, TTLs.

Everything runs against a real host (in-process on ``127.0.0.1:0``, or the CLI
as a subprocess) over real gRPC, with real bubblewrapped processes or real
docker containers. Requests no well-behaved client would send go through a raw
gRPC stub, since ``SandboxClient`` refuses to make them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import grpc
import grpc.aio
import pytest

from agent.sandbox_client import (
    SandboxClient,
    SandboxError,
    SandboxGone,
    SandboxInvalidRequest,
    SandboxLimitExceeded,
)
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox import cli
from remote_sandbox import config as host_config
from remote_sandbox.cli import READY_LINE_PREFIX
from remote_sandbox.providers.local import LocalProvider
from remote_sandbox.server import HostConfig, SandboxHost
from tests.fixtures.processes import marker_pids, wait_pids_gone
from tests.fixtures.sandbox_host import RunningHost, host_workspace, in_process_host, recipe_for, sandbox_host_process
from tests.fixtures.sandbox_host import _read_line as read_line

WAIT_S = 15.0
"""Bound on every wait for a process, a line or a file to appear or go."""

GIB = 1 << 30
MIB = 1 << 20

LIMITS = {"max_execs_per_sandbox": 2, "max_write_bytes": MIB, "max_sandboxes_per_tenant": 2}
"""The small limits of the ``limited_host`` fixture."""


# ----- helpers


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)], ids=["local", "docker"])
def provider_image(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(provider, image)``, once per provider; docker needs the engine and the test image."""
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
        return "docker", request.getfixturevalue("docker_test_image")
    return "local", ""


@pytest.fixture
async def limited_host(provider_image: tuple[str, str], tmp_path: Path) -> AsyncIterator[RunningHost]:
    """An in-process host with the tiny ``LIMITS``, once per provider."""
    provider, image = provider_image
    async with in_process_host(provider, tmp_path / "host-state", image, **LIMITS) as host:
        yield host


@pytest.fixture
async def local_limited_host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    """An in-process local host with the tiny ``LIMITS`` (for checks that never reach the provider)."""
    async with in_process_host("local", tmp_path / "host-state", **LIMITS) as host:
        yield host


@contextlib.asynccontextmanager
async def raw_stub(
    host: RunningHost, token: str | None = None
) -> AsyncIterator[tuple[pb_grpc.SandboxStub, tuple[tuple[str, str], ...]]]:
    """A bare stub that may send messages up to 64 MiB, and the metadata of ``token`` (default: tenant A's)."""
    channel = grpc.aio.insecure_channel(
        host.target.removeprefix("grpc://"),
        options=[("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)],
    )
    try:
        yield pb_grpc.SandboxStub(channel), (("authorization", f"Bearer {token or host.token}"),)
    finally:
        await channel.close()


async def first_event(stream: AsyncIterator[pb.ExecEvent]) -> pb.ExecEvent:
    """The next event of ``stream`` (a running command's first is Started)."""
    return await asyncio.wait_for(anext(stream), WAIT_S)


async def drain(stream: AsyncIterator[pb.ExecEvent]) -> pb.Exited:
    """Consume ``stream`` to its end (the RPC finished on the host); return its Exited."""
    exited = None
    async for event in stream:
        if event.HasField("exited"):
            exited = event.exited
    assert exited is not None, "the command ended without Exited"
    return exited


def release_fifo(path: Path) -> None:
    """Open the FIFO ``path`` for writing (a command's ``cat`` reads it), write a line, close: the ``cat`` ends."""
    with open(path, "wb") as fifo:
        fifo.write(b"go\n")


def vm_hwm_bytes(pid: int) -> int:
    """The peak resident set size of process ``pid`` (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


def sandbox_containers(engine: docker.DockerClient, label: str) -> list[str]:
    """Ids of every container, running or not, carrying ``label`` (``key=value``)."""
    return [c.id for c in engine.containers.list(all=True, filters={"label": label})]


@dataclass
class LoggedHost:
    """A host subprocess whose stderr lines a test can wait on."""

    host: RunningHost
    process: subprocess.Popen[bytes]
    lines: queue.Queue[str]

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        """The first stderr line (from now on) matching the regex ``pattern``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if re.search(pattern, line):
                return line
        raise AssertionError(f"the host did not log a line matching {pattern!r} within {timeout} s")


@contextlib.contextmanager
def logged_host_process(state_dir: Path, extra_args: list[str]) -> Iterator[LoggedHost]:
    """``python -m remote_sandbox serve`` (local provider) with its stderr read line by line into a queue."""
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    token_file = state_dir.parent / "tokens"
    token_file.write_text(f"tenant-a {token}\n")
    token_file.chmod(0o600)
    args = [
        sys.executable, "-m", "remote_sandbox", "serve", "--listen", "127.0.0.1:0", "--provider", "local",
        "--token-file", str(token_file), "--state-dir", str(state_dir), *extra_args,
    ]  # fmt: skip
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            lines.put(raw.decode(errors="replace").rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        ready = read_line(process, WAIT_S)
        assert ready.startswith(READY_LINE_PREFIX), f"the host did not start: {ready!r}"
        host = RunningHost(
            target=f"grpc://{ready.removeprefix(READY_LINE_PREFIX)}",
            token=token,
            provider="local",
            state_dir=state_dir,
            recipe=recipe_for("local"),
            process=process,
        )
        yield LoggedHost(host, process, lines)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(WAIT_S)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


# ----- limits


async def test_cli_defaults_are_the_servers() -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert args.max_sandboxes_per_tenant == host_config.DEFAULT_MAX_SANDBOXES_PER_TENANT
    assert args.max_execs_per_sandbox == host_config.DEFAULT_MAX_EXECS_PER_SANDBOX
    assert args.max_write_bytes == host_config.DEFAULT_MAX_WRITE_BYTES
    assert args.reap_interval == host_config.HostConfig(listen="").reap_interval_s


@pytest.mark.parametrize("size", [17 * MIB, 40 * MIB], ids=["past-the-limit", "past-the-transport"])
async def test_oversized_exec_request_is_resource_exhausted(local_limited_host: RunningHost, size: int) -> None:
    async with SandboxClient(local_limited_host.target, local_limited_host.token) as client:
        sandbox = await client.provision(local_limited_host.recipe)
    async with raw_stub(local_limited_host) as (stub, metadata):
        request = pb.ExecRequest(sandbox_id=sandbox.sandbox_id, shell="wc -c", stdin=b"x" * size)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Exec(request, metadata=metadata, timeout=WAIT_S):
                pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = caught.value.details() or ""
    if size < host_config.TRANSPORT_MESSAGE_BYTES:
        assert "max message size" in details and str(host_config.MAX_MESSAGE_BYTES) in details, details
    else:
        assert "larger than max" in details, details  # gRPC's own words, past what it lets in at all


async def test_oversized_write_chunk_is_refused_and_nothing_is_written(local_limited_host: RunningHost) -> None:
    async with SandboxClient(local_limited_host.target, local_limited_host.token) as client:
        sandbox = await client.provision(local_limited_host.recipe)
    header = pb.WriteFileHeader(sandbox_id=sandbox.sandbox_id, path="big.bin")

    async def messages() -> AsyncIterator[pb.WriteFileRequest]:
        yield pb.WriteFileRequest(header=header)
        yield pb.WriteFileRequest(data=b"a" * 1000)
        yield pb.WriteFileRequest(data=b"b" * (17 * MIB))
        yield pb.WriteFileRequest(data=b"c" * 1000)

    async with raw_stub(local_limited_host) as (stub, metadata):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.WriteFile(messages(), metadata=metadata, timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max message size" in (caught.value.details() or "")
    assert os.listdir(host_workspace(local_limited_host, sandbox.sandbox_id)) == []


async def test_execs_past_the_per_sandbox_limit_are_refused(limited_host: RunningHost) -> None:
    async with SandboxClient(limited_host.target, limited_host.token) as client:
        sandbox = await client.provision(limited_host.recipe)
        workspace = host_workspace(limited_host, sandbox.sandbox_id)
        streams = []
        for name in ("one.fifo", "two.fifo"):
            os.mkfifo(workspace / name)
            stream = client.exec_stream(sandbox.sandbox_id, shell=f"cat {name}", timeout_ms=60_000)
            assert (await first_event(stream)).HasField("started")
            streams.append(stream)

        with pytest.raises(SandboxLimitExceeded) as refused:
            await client.exec(sandbox.sandbox_id, argv=["true"])
        assert "max execs per sandbox is 2" in str(refused.value)

        await asyncio.wait_for(asyncio.to_thread(release_fifo, workspace / "one.fifo"), WAIT_S)
        assert (await drain(streams[0])).exit_code == 0
        # One finished, so one more may run; other sandboxes never counted against this one.
        assert (await client.exec(sandbox.sandbox_id, argv=["echo", "again"])).stdout == b"again\n"
        await asyncio.wait_for(asyncio.to_thread(release_fifo, workspace / "two.fifo"), WAIT_S)
        assert (await drain(streams[1])).exit_code == 0


async def test_write_past_max_write_bytes_is_refused_while_it_streams(local_limited_host: RunningHost) -> None:
    async with SandboxClient(local_limited_host.target, local_limited_host.token) as client:
        sandbox = await client.provision(local_limited_host.recipe)
        await client.write_file(sandbox.sandbox_id, "exact.bin", b"e" * MIB)
        await client.write_file(sandbox.sandbox_id, "kept.txt", b"the old content\n")
        with pytest.raises(SandboxLimitExceeded) as refused:
            await client.write_file(sandbox.sandbox_id, "kept.txt", b"n" * (MIB + 1))
        assert f"max write bytes is {MIB} bytes (1 MiB)" in str(refused.value)
        assert await client.read_file(sandbox.sandbox_id, "kept.txt") == b"the old content\n"
        # Much more than the limit is still in flight when the host refuses: the client
        # must still hear which limit it hit, every time (not "Internal error from Core").
        for attempt in range(20):
            with pytest.raises(SandboxLimitExceeded) as refused:
                await client.write_file(sandbox.sandbox_id, f"big-{attempt}.bin", b"b" * (8 * MIB))
            assert "max write bytes" in str(refused.value)

    header = pb.WriteFileHeader(sandbox_id=sandbox.sandbox_id, path="endless.bin")

    def endless() -> Iterator[pb.WriteFileRequest]:
        """A header, then data for ever: only a limit enforced mid-stream ends the call."""
        yield pb.WriteFileRequest(header=header)
        while True:
            yield pb.WriteFileRequest(data=b"z" * 65536)

    def send_endless() -> grpc.RpcError:
        # grpc-python's asyncio client may report a status that ends the call while it is
        # still sending as "Internal error from Core"; its threaded client keeps the
        # host's status, which is what this checks.
        with grpc.insecure_channel(local_limited_host.target.removeprefix("grpc://")) as channel:
            stub = pb_grpc.SandboxStub(channel)
            try:
                stub.WriteFile(
                    endless(), metadata=(("authorization", f"Bearer {local_limited_host.token}"),), timeout=WAIT_S
                )
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("an endless upload was accepted")

    caught = await asyncio.to_thread(send_endless)
    assert caught.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught
    assert "max write bytes" in (caught.details() or "")
    left = sorted(os.listdir(host_workspace(local_limited_host, sandbox.sandbox_id)))
    assert left == ["exact.bin", "kept.txt"], "no temp file and no partial file may stay"


async def test_sandboxes_past_the_per_tenant_limit_are_refused(limited_host: RunningHost) -> None:
    async with (
        SandboxClient(limited_host.target, limited_host.token) as client,
        SandboxClient(limited_host.target, limited_host.other_token) as other,
    ):
        # Four at once: sandboxes still being made count, so exactly two are made.
        results = await asyncio.gather(
            *(client.provision(limited_host.recipe) for _ in range(4)), return_exceptions=True
        )
        made = [r for r in results if isinstance(r, pb.SandboxInfo)]
        refused = [r for r in results if isinstance(r, SandboxLimitExceeded)]
        assert (len(made), len(refused)) == (2, 2), results
        assert "max sandboxes per tenant is 2" in str(refused[0])
        assert len(await client.list()) == 2

        assert (await other.provision(limited_host.recipe)).sandbox_id, "another tenant has its own count"
        await client.destroy(made[0].sandbox_id)
        assert (await client.provision(limited_host.recipe)).sandbox_id


async def test_serve_flags_set_the_limits(tmp_path: Path) -> None:
    flags = ["--max-execs-per-sandbox", "1", "--max-write-bytes", "1K", "--max-sandboxes-per-tenant", "1"]
    with sandbox_host_process("local", state_dir=tmp_path / "state", extra_args=flags) as host:
        async with SandboxClient(host.target, host.token) as client:
            sandbox = await client.provision(host.recipe)
            with pytest.raises(SandboxLimitExceeded, match="max sandboxes per tenant is 1"):
                await client.provision(host.recipe)
            await client.write_file(sandbox.sandbox_id, "small", b"s" * 1024)
            with pytest.raises(SandboxLimitExceeded, match=r"max write bytes is 1024 bytes \(1 KiB\)"):
                await client.write_file(sandbox.sandbox_id, "large", b"l" * 1025)
            stream = client.exec_stream(sandbox.sandbox_id, shell="echo ready; exec sleep 1000", timeout_ms=60_000)
            assert (await first_event(stream)).HasField("started")
            with pytest.raises(SandboxLimitExceeded, match="max execs per sandbox is 1"):
                await client.exec(sandbox.sandbox_id, argv=["true"])
            await stream.aclose()


# ----- malformed requests


async def test_exec_without_a_command_is_an_invalid_argument(local_limited_host: RunningHost) -> None:
    async with SandboxClient(local_limited_host.target, local_limited_host.token) as client:
        sandbox = await client.provision(local_limited_host.recipe)
    async with raw_stub(local_limited_host) as (stub, metadata):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Exec(pb.ExecRequest(sandbox_id=sandbox.sandbox_id), metadata=metadata, timeout=WAIT_S):
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "set argv or shell" in (caught.value.details() or "")


async def test_bad_commands_are_invalid_arguments_on_every_provider(limited_host: RunningHost) -> None:
    async with SandboxClient(limited_host.target, limited_host.token) as client:
        sandbox = await client.provision(limited_host.recipe)
        with pytest.raises(SandboxInvalidRequest, match="argv is empty"):
            await client.exec(sandbox.sandbox_id, argv=[])
        with pytest.raises(SandboxInvalidRequest, match="not valid in a shell"):
            await client.exec(sandbox.sandbox_id, shell="true", env={"NOT-A-NAME": "x"})
        with pytest.raises(SandboxInvalidRequest, match="NUL"):
            await client.exec(sandbox.sandbox_id, argv=["echo", "a\0b"])
        # The sandbox is fine afterwards.
        assert (await client.exec(sandbox.sandbox_id, argv=["echo", "ok"])).stdout == b"ok\n"


@pytest.mark.parametrize("first", ["data", "nothing"])
async def test_write_file_must_start_with_its_header(local_limited_host: RunningHost, first: str) -> None:
    async with SandboxClient(local_limited_host.target, local_limited_host.token) as client:
        sandbox = await client.provision(local_limited_host.recipe)

    async def messages() -> AsyncIterator[pb.WriteFileRequest]:
        if first == "data":
            yield pb.WriteFileRequest(data=b"orphan data")
            yield pb.WriteFileRequest(header=pb.WriteFileHeader(sandbox_id=sandbox.sandbox_id, path="f.txt"))

    async with raw_stub(local_limited_host) as (stub, metadata):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.WriteFile(messages(), metadata=metadata, timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be the header" in (caught.value.details() or "")
    assert os.listdir(host_workspace(local_limited_host, sandbox.sandbox_id)) == []


async def test_import_must_start_with_the_sandbox(local_limited_host: RunningHost) -> None:
    async with SandboxClient(local_limited_host.target, local_limited_host.token) as client:
        sandbox = await client.provision(local_limited_host.recipe)

    async def messages() -> AsyncIterator[pb.ImportRequest]:
        yield pb.ImportRequest(data=b"tar data first")
        yield pb.ImportRequest(sandbox=pb.SandboxRef(sandbox_id=sandbox.sandbox_id))

    async with raw_stub(local_limited_host) as (stub, metadata):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Import(messages(), metadata=metadata, timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must name the sandbox" in (caught.value.details() or "")


def _tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "stream",
    [b"this is not a tar stream at all" * 100, b"", _tar_of({"a.txt": b"A" * 5000})[:1536]],
    ids=["garbage", "empty", "cut-short"],
)
async def test_a_broken_tar_is_an_invalid_argument(local_limited_host: RunningHost, stream: bytes) -> None:
    async with SandboxClient(local_limited_host.target, local_limited_host.token) as client:
        sandbox = await client.provision(local_limited_host.recipe)
        with pytest.raises(SandboxInvalidRequest, match="tar"):
            await client.import_tar(sandbox.sandbox_id, stream)
        # Nothing half-imported: the cut-short member never landed, nor did its temp file.
        assert await client.manifest(sandbox.sandbox_id) == []
    assert os.listdir(host_workspace(local_limited_host, sandbox.sandbox_id)) == []
    assert [
        p.name
        for p in host_workspace(local_limited_host, sandbox.sandbox_id).parent.iterdir()
        if p.name.startswith("import-")
    ] == []


# ----- a flood of output


async def test_a_gibibyte_of_stdout_is_capped_spilled_whole_and_the_host_stays_small(
    provider_image: tuple[str, str], tmp_path: Path
) -> None:
    provider, image = provider_image
    with sandbox_host_process(provider, state_dir=tmp_path / "state", image=image) as host:
        assert host.process is not None
        async with SandboxClient(host.target, host.token) as client:
            sandbox = await client.provision(host.recipe)
            streamed = 0
            exited = None
            async for event in client.exec_stream(
                sandbox.sandbox_id, argv=["head", "-c", str(GIB), "/dev/zero"], timeout_ms=300_000
            ):
                if event.HasField("output"):
                    streamed += len(event.output.data)
                elif event.HasField("exited"):
                    exited = event.exited
            assert exited is not None
            assert exited.exit_code == 0
            assert exited.truncated
            assert streamed == host_config.DEFAULT_OUTPUT_CAP
            assert exited.stdout_bytes == GIB
            spill = await client.stat(sandbox.sandbox_id, exited.spill_path)
            assert spill.size == GIB, "the spill file holds the whole output"
            assert await client.read_file(sandbox.sandbox_id, exited.spill_path, offset=GIB - 4096) == b"\0" * 4096
            peak = vm_hwm_bytes(host.process.pid)
    assert peak < 300 * MIB, f"the host's peak RSS was {peak / MIB:.0f} MiB"


# ----- many clients


async def test_32_clients_each_running_100_execs_without_error(tmp_path: Path) -> None:
    clients, execs = 32, 100
    with sandbox_host_process("local", state_dir=tmp_path / "state") as host:

        async def session(n: int) -> list[str]:
            """One client with its own channel and sandbox; return what went wrong."""
            problems = []
            async with SandboxClient(host.target, host.token) as client:
                sandbox = await client.provision(host.recipe)
                for i in range(execs):
                    try:
                        result = await client.exec(sandbox.sandbox_id, argv=["echo", f"{n}-{i}"])
                    except SandboxError as exc:
                        problems.append(f"client {n} exec {i}: {exc}")
                        continue
                    if (result.exit_code, result.stdout, result.stderr) != (0, f"{n}-{i}\n".encode(), b""):
                        problems.append(f"client {n} exec {i}: {result}")
                await client.destroy(sandbox.sandbox_id)
            return problems

        outcomes = await asyncio.gather(*(session(n) for n in range(clients)))
    problems = [p for found in outcomes for p in found]
    assert problems == [], problems[:10]


# ----- a host that dies


async def test_local_host_killed_and_restarted_cleans_its_sandboxes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    marker = f"tether-marker-{secrets.token_hex(6)}"
    with sandbox_host_process("local", state_dir=state) as host:
        assert host.process is not None
        async with SandboxClient(host.target, host.token) as client:
            sandboxes = [await client.provision(host.recipe) for _ in range(2)]
            await client.write_file(sandboxes[0].sandbox_id, "work.txt", b"unsaved\n")
            stream = client.exec_stream(
                sandboxes[0].sandbox_id, shell=f"sh -c 'echo ready; sleep 1000; true' {marker}", timeout_ms=600_000
            )
            async for event in stream:
                if event.HasField("output") and b"ready" in event.output.data:
                    break
            alive = marker_pids(marker)
            assert alive

            host.process.kill()
            assert await asyncio.to_thread(host.process.wait, WAIT_S) == -signal.SIGKILL
            with contextlib.suppress(SandboxError):
                await stream.aclose()
        # bubblewrap's --die-with-parent takes the commands with the host.
        assert await asyncio.to_thread(wait_pids_gone, alive, WAIT_S) == []
        left = sorted(p.name for p in (state / "sandboxes").iterdir())
        assert left == sorted(s.sandbox_id for s in sandboxes), "a killed host cannot clean up"

    with sandbox_host_process("local", state_dir=state) as again:
        assert list((state / "sandboxes").iterdir()) == [], "the restarted host removes what the dead one left"
        async with SandboxClient(again.target, again.token) as client:
            assert await client.list() == []
            with pytest.raises(SandboxGone):
                await client.get(sandboxes[0].sandbox_id)
            fresh = await client.provision(again.recipe)
            assert (await client.exec(fresh.sandbox_id, argv=["echo", "fine"])).stdout == b"fine\n"


@pytest.mark.docker
async def test_docker_host_killed_and_restarted_keeps_its_running_containers(
    tmp_path: Path, docker_engine: docker.DockerClient, docker_test_image: str
) -> None:
    state = tmp_path / "state"
    with sandbox_host_process("docker", state_dir=state, image=docker_test_image) as host:
        assert host.process is not None
        async with SandboxClient(host.target, host.token) as client:
            sandboxes = [await client.provision(host.recipe) for _ in range(2)]
        host_id = (state / "host-id").read_text().strip()
        containers = sandbox_containers(docker_engine, f"tether.host={host_id}")
        assert len(containers) == 2
        host.process.kill()
        assert await asyncio.to_thread(host.process.wait, WAIT_S) == -signal.SIGKILL
        assert sorted(sandbox_containers(docker_engine, f"tether.host={host_id}")) == sorted(containers)

    # Reconciling happens before the host says it listens: by then the running orphans are
    # adopted with their directories (issue 11: their tenant gets them back).
    with sandbox_host_process("docker", state_dir=state, image=docker_test_image) as again:
        assert sorted(sandbox_containers(docker_engine, f"tether.host={host_id}")) == sorted(containers)
        assert sorted(p.name for p in (state / "sandboxes").iterdir()) == sorted(s.sandbox_id for s in sandboxes)
        async with SandboxClient(again.target, again.token) as client:
            assert sorted(s.sandbox_id for s in await client.list()) == sorted(s.sandbox_id for s in sandboxes)
            assert (await client.exec(sandboxes[0].sandbox_id, argv=["echo", "back"])).stdout == b"back\n"
            fresh = await client.provision(again.recipe)
            assert (await client.exec(fresh.sandbox_id, argv=["echo", "fine"])).stdout == b"fine\n"
    # Not destroyed on exit either (the host leaves sandboxes unless told to destroy them): clean up.
    for container_id in sandbox_containers(docker_engine, f"tether.host={host_id}"):
        docker_engine.api.remove_container(container_id, force=True)


# ----- idle TTL


async def test_idle_ttl_destroys_the_sandbox(
    provider_image: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    provider, image = provider_image
    async with in_process_host(provider, tmp_path / "host-state", image) as running:
        host = running.host
        assert host is not None
        recipe = pb.Recipe()
        recipe.CopyFrom(running.recipe)
        recipe.idle_ttl_seconds = 1
        async with SandboxClient(running.target, running.token) as client:
            sandbox = await client.provision(recipe)
            used = (await client.touch(sandbox.sandbox_id)).last_used_unix_ms

            assert await host.reap_idle(now_ms=used + 900) == [], "not idle long enough yet"
            reaped = await host.reap_idle(now_ms=used + 1_100)

            assert reaped == [sandbox.sandbox_id]
            with pytest.raises(SandboxGone):
                await client.get(sandbox.sandbox_id)
            with pytest.raises(SandboxGone):
                await client.exec(sandbox.sandbox_id, argv=["true"])
        assert not (running.state_dir / "sandboxes" / sandbox.sandbox_id).exists()
        if provider == "docker":
            engine = request.getfixturevalue("docker_engine")
            assert sandbox_containers(engine, f"tether.sandbox={sandbox.sandbox_id}") == []


async def test_the_reaper_of_a_host_process_destroys_an_idle_sandbox(tmp_path: Path) -> None:
    with logged_host_process(tmp_path / "state", ["--reap-interval", "0.1"]) as logged:
        recipe = pb.Recipe()
        recipe.CopyFrom(logged.host.recipe)
        recipe.idle_ttl_seconds = 1
        async with SandboxClient(logged.host.target, logged.host.token) as client:
            idle = await client.provision(recipe)
            kept = await client.provision(logged.host.recipe)  # no TTL: never reaped

            await asyncio.to_thread(logged.wait_for_line, rf"destroyed idle sandbox {idle.sandbox_id}\b", WAIT_S)

            with pytest.raises(SandboxGone):
                await client.get(idle.sandbox_id)
            assert not (logged.host.state_dir / "sandboxes" / idle.sandbox_id).exists()
            assert [s.sandbox_id for s in await client.list()] == [kept.sandbox_id]


# ----- the local provider's resident command launcher


async def test_a_command_that_kills_the_launcher_breaks_nothing_for_long(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = await client.provision(local_sandbox_host.recipe)
        if not sandbox.isolation.startswith("bubblewrap"):
            pytest.skip(f"no launcher without bubblewrap: {sandbox.isolation}")
        await client.exec(sandbox.sandbox_id, shell="echo kept > /tmp/note && echo kept > note")
        waiting = client.exec_stream(sandbox.sandbox_id, shell="echo ready; exec sleep 1000", timeout_ms=60_000)
        assert (await first_event(waiting)).HasField("started")

        killer = await client.exec(sandbox.sandbox_id, shell="kill -9 $(pgrep -f tether-launcher); sleep 5")

        # Everything running went with the launcher's namespace, and said so...
        assert (killer.exit_code, killer.signal) == (-1, signal.SIGKILL)
        assert (await asyncio.wait_for(drain(waiting), WAIT_S)).signal == signal.SIGKILL
        # ...and the next command gets a fresh launcher over the same files.
        again = await client.exec(sandbox.sandbox_id, shell="cat /tmp/note note")
        assert again.stdout == b"kept\nkept\n"


async def test_launcher_commands_behave_like_a_shells(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = await client.provision(local_sandbox_host.recipe)
        sid = sandbox.sandbox_id
        # Signals a shell would leave at their defaults are at their defaults (Python ignores SIGPIPE).
        status = await client.exec(sid, argv=["grep", "SigIgn", "/proc/self/status"])
        ignored = int(status.stdout.split()[1], 16)
        for number in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
            assert not ignored & (1 << (number - 1)), f"{number.name} is ignored"
        assert (await client.exec(sid, shell="yes | head -n 1")).stdout == b"y\n"
        # argv programs are found on the command's own PATH, from its own directory.
        await client.write_file(sid, "tools/hello", b"#!/bin/sh\necho hello from $(pwd)\n", mode=0o755)
        await client.write_file(sid, "sub/.keep", b"")
        found = await client.exec(
            sid, argv=["hello"], cwd="sub", env={"PATH": f"{sandbox.workdir}/tools:/usr/bin:/bin"}
        )
        assert found.stdout == f"hello from {sandbox.workdir}/sub\n".encode()
        # What the fast path cannot do, the shell does, with the shell's words.
        missing = await client.exec(sid, argv=["no-such-program-here"])
        assert missing.exit_code == 127 and b"not found" in missing.stderr
        no_dir = await client.exec(sid, argv=["true"], cwd="no/such/dir")
        assert no_dir.exit_code != 0 and b"can't cd" in no_dir.stderr
        # A script too long for one launcher message travels beside it.
        long_line = "x" * 100_000
        assert (await client.exec(sid, shell=f"echo {long_line} | wc -c")).stdout.strip() == b"100001"


async def test_destroy_ends_processes_that_left_their_group(local_sandbox_host: RunningHost) -> None:
    marker = f"tether-marker-{secrets.token_hex(6)}"
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = await client.provision(local_sandbox_host.recipe)
        if not sandbox.isolation.startswith("bubblewrap"):
            pytest.skip(f"without bubblewrap nothing holds escaped processes: {sandbox.isolation}")
        result = await client.exec(
            sandbox.sandbox_id,
            # The command waits (spinning, inside the sandbox) until the escapee runs in its own session.
            shell=f"setsid sh -c 'touch escaped; sleep 1000; true' {marker} >/dev/null 2>&1 </dev/null &"
            " while [ ! -e escaped ]; do :; done; echo left",
        )
        assert result.stdout == b"left\n"
        escaped = marker_pids(marker)
        assert escaped, "a process in its own session outlives its command, until the sandbox goes"
        await client.destroy(sandbox.sandbox_id)
    assert await asyncio.to_thread(wait_pids_gone, escaped, WAIT_S) == []


@pytest.mark.parametrize("resident", [True, False], ids=["launcher", "bwrap-per-command"])
async def test_both_ways_of_starting_commands_keep_the_contract(tmp_path: Path, resident: bool) -> None:
    try:
        provider = LocalProvider(use_bwrap=True, resident=resident)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    token = secrets.token_hex(16)
    host = SandboxHost(
        HostConfig(listen="127.0.0.1:0", tokens={token: "t"}, state_dir=tmp_path / "state"), provider=provider
    )
    address = await host.start()
    marker = f"tether-marker-{secrets.token_hex(6)}"
    try:
        async with SandboxClient(f"grpc://{address}", token) as client:
            sid = (await client.provision(recipe_for("local"))).sandbox_id
            echoed = await client.exec(sid, argv=["sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"in\n")
            assert (echoed.stdout, echoed.stderr, echoed.exit_code) == (b"in\n", b"err\n", 3)
            assert (await client.exec(sid, shell="cd /tmp && pwd", report_cwd=True)).cwd == "/tmp"
            timed = await client.exec(sid, shell=f"sh -c 'sleep 1000; true' {marker} & echo go; wait", timeout_ms=1500)
            assert timed.timed_out and timed.stdout == b"go\n"
            assert marker_pids(marker) == []
            capped = await client.exec(sid, shell="seq 1 20000", output_cap=100)
            assert capped.truncated and len(capped.stdout) == 100
            assert (await client.stat(sid, capped.spill_path)).size == len("".join(f"{i}\n" for i in range(1, 20001)))
    finally:
        await host.stop()
