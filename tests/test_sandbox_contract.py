"""The sandbox contract, end to end: real host, real gRPC over TCP, real processes or containers.

Every test of the first part runs once per provider (``local``, ``docker``)
through the ``sandbox_host`` fixture. Checks that no process survives a kill
read the machine's process table (``/proc``), which also shows a local docker
engine's container processes, and wait on the processes' exit with pidfds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import signal
import stat
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.sandbox_client import (
    HostUnreachable,
    SandboxClient,
    SandboxError,
    SandboxGone,
    SandboxInvalidRequest,
    SandboxNotRunning,
)
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.providers.local import LocalProvider
from remote_sandbox.server import HostConfig, SandboxHost
from tests.fixtures.processes import marker_pids, wait_pids_gone
from tests.fixtures.sandbox_host import RunningHost, recipe_for, sandbox_host_process

WAIT_S = 15.0
"""Bound on every wait for a process to appear or go."""


# ----- helpers


def background_marker_script(marker: str) -> str:
    """A shell script that leaves a marked grandchild running, then blocks.

    The marked child itself says ``ready``: by then it surely runs with the marker in its argv.
    """
    return f"sh -c 'echo ready; sleep 1000; true' {marker} & sleep 1000"


async def wait_for_ready_line(stream: AsyncIterator[pb.ExecEvent]) -> None:
    """Consume ``stream`` until stdout says ``ready``."""
    seen = b""
    async for event in stream:
        if event.HasField("output") and event.output.stream == pb.Output.STDOUT:
            seen += event.output.data
            if b"ready" in seen:
                return
    raise AssertionError(f"the command ended before saying ready (stdout {seen!r})")


@pytest.fixture
async def client(sandbox_host: RunningHost) -> AsyncIterator[SandboxClient]:
    """A client of the host with tenant A's token."""
    async with SandboxClient(sandbox_host.target, sandbox_host.token) as client:
        await client.wait_ready()
        yield client


@pytest.fixture
async def sandbox(client: SandboxClient, sandbox_host: RunningHost) -> AsyncIterator[pb.SandboxInfo]:
    """A fresh sandbox, destroyed afterwards."""
    info = await client.provision(sandbox_host.recipe)
    yield info
    with contextlib.suppress(SandboxError):
        await client.destroy(info.sandbox_id)


# ----- lifecycle


async def test_provision_get_list_destroy(client: SandboxClient, sandbox_host: RunningHost) -> None:
    info = await client.provision(sandbox_host.recipe)
    assert info.sandbox_id
    assert info.state == pb.SandboxInfo.RUNNING
    assert info.provider == sandbox_host.provider
    assert info.workdir
    assert info.isolation
    assert info.os
    assert (await client.get(info.sandbox_id)).sandbox_id == info.sandbox_id
    assert [s.sandbox_id for s in await client.list()] == [info.sandbox_id]
    workspace_dirs = list((sandbox_host.state_dir / "sandboxes").iterdir())
    assert len(workspace_dirs) == 1

    await client.destroy(info.sandbox_id)

    with pytest.raises(SandboxGone):
        await client.get(info.sandbox_id)
    assert await client.list() == []
    assert list((sandbox_host.state_dir / "sandboxes").iterdir()) == []


async def test_provision_is_idempotent_on_request_id(client: SandboxClient, sandbox_host: RunningHost) -> None:
    request_id = secrets.token_hex(8)
    first, second = await asyncio.gather(
        client.provision(sandbox_host.recipe, request_id=request_id),
        client.provision(sandbox_host.recipe, request_id=request_id),
    )
    third = await client.provision(sandbox_host.recipe, request_id=request_id)
    other = await client.provision(sandbox_host.recipe, request_id=secrets.token_hex(8))
    assert first.sandbox_id == second.sandbox_id == third.sandbox_id
    assert other.sandbox_id != first.sandbox_id
    assert len(await client.list()) == 2


async def test_failing_setup_refuses_the_sandbox_and_removes_it(
    client: SandboxClient, sandbox_host: RunningHost
) -> None:
    recipe = pb.Recipe()
    recipe.CopyFrom(sandbox_host.recipe)
    recipe.setup.extend(["echo first-setup-ran", "echo setup-broke >&2; exit 7"])
    with pytest.raises(SandboxNotRunning, match="setup-broke"):
        await client.provision(recipe)
    assert await client.list() == []
    assert list((sandbox_host.state_dir / "sandboxes").iterdir()) == []


async def test_setup_commands_run_in_the_workspace(client: SandboxClient, sandbox_host: RunningHost) -> None:
    recipe = pb.Recipe()
    recipe.CopyFrom(sandbox_host.recipe)
    recipe.setup.append("echo prepared > setup.txt")
    info = await client.provision(recipe)
    assert await client.read_file(info.sandbox_id, "setup.txt") == b"prepared\n"


async def test_bad_workdir_is_an_invalid_request(client: SandboxClient, sandbox_host: RunningHost) -> None:
    recipe = pb.Recipe()
    recipe.CopyFrom(sandbox_host.recipe)
    recipe.workdir = "/usr"
    with pytest.raises(SandboxInvalidRequest, match="system directory"):
        await client.provision(recipe)


async def test_another_tenants_sandbox_is_gone(
    client: SandboxClient, sandbox_host: RunningHost, sandbox: pb.SandboxInfo
) -> None:
    async with SandboxClient(sandbox_host.target, sandbox_host.other_token) as other:
        assert await other.list() == []
        with pytest.raises(SandboxGone):
            await other.get(sandbox.sandbox_id)
        with pytest.raises(SandboxGone):
            await other.exec(sandbox.sandbox_id, shell="true")
        with pytest.raises(SandboxGone):
            await other.read_file(sandbox.sandbox_id, "x")
        with pytest.raises(SandboxGone):
            await other.destroy(sandbox.sandbox_id)
    assert (await client.get(sandbox.sandbox_id)).state == pb.SandboxInfo.RUNNING


async def test_destroyed_sandbox_is_gone_for_every_call(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    await client.destroy(sandbox.sandbox_id)
    with pytest.raises(SandboxGone):
        await client.exec(sandbox.sandbox_id, shell="true")
    with pytest.raises(SandboxGone):
        await client.write_file(sandbox.sandbox_id, "a", b"x")
    with pytest.raises(SandboxGone):
        await client.stat(sandbox.sandbox_id, "a")
    with pytest.raises(SandboxGone):
        await client.touch(sandbox.sandbox_id)
    with pytest.raises(SandboxGone):
        await client.destroy(sandbox.sandbox_id)


async def test_touch_moves_last_used(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    before = (await client.get(sandbox.sandbox_id)).last_used_unix_ms
    await client.exec(sandbox.sandbox_id, shell="true")
    after = await client.touch(sandbox.sandbox_id)
    assert after.last_used_unix_ms >= before
    assert after.created_unix_ms <= after.last_used_unix_ms


# ----- commands


async def test_echo_keeps_stdout_and_stderr_apart(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    result = await client.exec(sandbox.sandbox_id, shell="echo out; echo err >&2")
    assert (result.exit_code, result.signal, result.timed_out) == (0, 0, False)
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


async def test_stream_starts_with_started_and_ends_with_exited(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    kinds = [e.WhichOneof("event") async for e in client.exec_stream(sandbox.sandbox_id, argv=["echo", "hi"])]
    assert kinds[0] == "started"
    assert kinds[-1] == "exited"
    assert set(kinds[1:-1]) <= {"output"}


async def test_non_zero_exit_is_a_result(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    result = await client.exec(sandbox.sandbox_id, shell="echo partial; exit 3")
    assert result.exit_code == 3
    assert result.stdout == b"partial\n"
    missing = await client.exec(sandbox.sandbox_id, argv=["/no/such/program"])
    assert missing.exit_code != 0
    assert missing.stderr


async def test_argv_is_not_interpreted_by_a_shell(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    result = await client.exec(sandbox.sandbox_id, argv=["echo", "$HOME", "a b", "*"])
    assert result.stdout == b"$HOME a b *\n"


async def test_stdin_is_fed_then_closed(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    data = os.urandom(300_000)  # more than a pipe buffer: writing must not deadlock with reading
    result = await client.exec(sandbox.sandbox_id, argv=["cat"], stdin=data)
    assert result.exit_code == 0
    assert result.stdout == data
    counted = await client.exec(sandbox.sandbox_id, shell="wc -l", stdin=b"a\nb\n")
    assert counted.stdout.strip() == b"2"


async def test_env_comes_from_recipe_and_request_only(
    client: SandboxClient, sandbox_host: RunningHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_TEST_HOST_SECRET", "must-not-leak")
    recipe = pb.Recipe()
    recipe.CopyFrom(sandbox_host.recipe)
    recipe.env["FROM_RECIPE"] = "r"
    recipe.env["OVERRIDDEN"] = "recipe"
    info = await client.provision(recipe)
    result = await client.exec(info.sandbox_id, shell="env", env={"FROM_REQUEST": "q", "OVERRIDDEN": "request"})
    lines = set(result.stdout.decode().splitlines())
    assert {"FROM_RECIPE=r", "FROM_REQUEST=q", "OVERRIDDEN=request"} <= lines
    assert "must-not-leak" not in result.stdout.decode()


async def test_cwd_and_report_cwd(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    workdir = sandbox.workdir
    await client.exec(sandbox.sandbox_id, shell="mkdir -p sub/deeper")
    result = await client.exec(sandbox.sandbox_id, shell="pwd", cwd="sub")
    assert result.stdout.decode().strip() == f"{workdir}/sub"
    moved = await client.exec(sandbox.sandbox_id, shell="cd sub/deeper", report_cwd=True)
    assert moved.cwd == f"{workdir}/sub/deeper"
    again = await client.exec(sandbox.sandbox_id, shell="pwd", cwd=moved.cwd)
    assert again.stdout.decode().strip() == moved.cwd
    silent = await client.exec(sandbox.sandbox_id, shell="cd sub")
    assert silent.cwd == ""
    argv = await client.exec(sandbox.sandbox_id, argv=["pwd"], cwd="sub", report_cwd=True)
    assert argv.stdout.decode().strip() == f"{workdir}/sub"
    assert argv.cwd == ""
    missing = await client.exec(sandbox.sandbox_id, shell="pwd", cwd="no-such-dir")
    assert missing.exit_code != 0


async def test_timeout_kills_the_whole_group(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    marker = f"tether-marker-{secrets.token_hex(6)}"
    stream = client.exec_stream(sandbox.sandbox_id, shell=background_marker_script(marker), timeout_ms=3000)
    await wait_for_ready_line(stream)
    alive = marker_pids(marker)
    assert alive, "the background process should be running before the timeout"
    exited = None
    async for event in stream:
        if event.HasField("exited"):
            exited = event.exited
    assert exited is not None and exited.timed_out
    assert exited.exit_code != 0 or exited.signal != 0
    assert await asyncio.to_thread(wait_pids_gone, alive, WAIT_S) == []


async def test_cancelling_the_call_kills_the_whole_group(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    marker = f"tether-marker-{secrets.token_hex(6)}"
    ready = asyncio.Event()

    def on_output(stream: int, data: bytes) -> None:
        if b"ready" in data:
            ready.set()

    task = asyncio.ensure_future(
        client.exec(sandbox.sandbox_id, shell=background_marker_script(marker), timeout_ms=600_000, on_output=on_output)
    )
    await asyncio.wait_for(ready.wait(), WAIT_S)
    alive = marker_pids(marker)
    assert alive, "the background process should be running before the cancel"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(wait_pids_gone, alive, WAIT_S) == []
    # The sandbox itself is fine afterwards.
    assert (await client.exec(sandbox.sandbox_id, shell="echo still here")).stdout == b"still here\n"


async def test_closing_the_stream_early_kills_the_command(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    marker = f"tether-marker-{secrets.token_hex(6)}"
    stream = client.exec_stream(sandbox.sandbox_id, shell=background_marker_script(marker), timeout_ms=600_000)
    await wait_for_ready_line(stream)
    alive = marker_pids(marker)
    assert alive
    await stream.aclose()
    assert await asyncio.to_thread(wait_pids_gone, alive, WAIT_S) == []


async def test_output_past_the_cap_is_spilled_whole(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    script = "i=0; while [ $i -lt 400 ]; do echo line-$i-0123456789abcdef; i=$((i+1)); done"
    full = (await client.exec(sandbox.sandbox_id, shell=script)).stdout
    assert len(full) > 4000
    result = await client.exec(sandbox.sandbox_id, shell=script, output_cap=1000)
    assert result.truncated
    assert len(result.stdout) <= 1000
    assert full.startswith(result.stdout)
    assert result.spill_path
    assert not result.spill_path.startswith(sandbox.workdir + "/"), "the spill file must not sit in the workspace"
    assert await client.read_file(sandbox.sandbox_id, result.spill_path) == full
    seen_inside = await client.exec(sandbox.sandbox_id, argv=["cat", result.spill_path])
    assert seen_inside.stdout == full
    assert not any(e.path.endswith(".log") for e in await client.manifest(sandbox.sandbox_id))


async def test_output_under_the_cap_is_not_truncated(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    result = await client.exec(sandbox.sandbox_id, shell="echo small", output_cap=1000)
    assert not result.truncated
    assert result.spill_path == ""


# ----- files


async def test_read_write_round_trip_with_5_mib_binary(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)
    info = await client.write_file(sandbox.sandbox_id, "blob.bin", data)
    assert info.size == len(data)
    assert await client.read_file(sandbox.sandbox_id, "blob.bin") == data
    assert (
        await client.read_file(sandbox.sandbox_id, f"{sandbox.workdir}/blob.bin", offset=100, length=50)
        == data[100:150]
    )
    assert await client.read_file(sandbox.sandbox_id, "blob.bin", offset=len(data)) == b""
    checksum = await client.exec(sandbox.sandbox_id, argv=["wc", "-c", "blob.bin"])
    assert checksum.stdout.split()[0] == str(len(data)).encode()


async def test_write_is_atomic_creates_parents_and_sets_mode(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    info = await client.write_file(sandbox.sandbox_id, "a/b/c.txt", b"hello", mode=0o600)
    assert info.kind == pb.FileInfo.FILE
    assert stat.S_IMODE(info.mode) == 0o600
    assert (await client.stat(sandbox.sandbox_id, "a/b/c.txt")).mode == 0o600
    assert (await client.exec(sandbox.sandbox_id, argv=["cat", "a/b/c.txt"])).stdout == b"hello"
    with pytest.raises(SandboxInvalidRequest, match="does not exist"):
        await client.write_file(sandbox.sandbox_id, "missing/dir/x", b"", create_parents=False)
    # A rename replaces the name and leaves the old inode alone: a hard link keeps the old content,
    # where an in-place rewrite would have changed both.
    await client.exec(sandbox.sandbox_id, shell="echo old > f && ln f f.link")
    await client.write_file(sandbox.sandbox_id, "f", b"new")
    assert await client.read_file(sandbox.sandbox_id, "f") == b"new"
    assert await client.read_file(sandbox.sandbox_id, "f.link") == b"old\n"
    names = [e.path.rsplit("/", 1)[1] for e in await client.list_dir(sandbox.sandbox_id, "")]
    assert names == ["a", "f", "f.link"], "no temp file may be left behind"


async def test_stat_and_list_dir(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    await client.exec(sandbox.sandbox_id, shell="mkdir d && printf 12345 > d/file && ln -s file d/link")
    missing = await client.stat(sandbox.sandbox_id, "nope")
    assert not missing.exists
    directory = await client.stat(sandbox.sandbox_id, "d")
    assert directory.exists and directory.kind == pb.FileInfo.DIRECTORY
    assert directory.path == f"{sandbox.workdir}/d"
    file = await client.stat(sandbox.sandbox_id, f"{sandbox.workdir}/d/file")
    assert (file.kind, file.size) == (pb.FileInfo.FILE, 5)
    followed = await client.stat(sandbox.sandbox_id, "d/link")
    assert (followed.kind, followed.size) == (pb.FileInfo.FILE, 5)
    entries = await client.list_dir(sandbox.sandbox_id, "d")
    assert [(e.path, e.kind) for e in entries] == [
        (f"{sandbox.workdir}/d/file", pb.FileInfo.FILE),
        (f"{sandbox.workdir}/d/link", pb.FileInfo.SYMLINK),
    ]
    with pytest.raises(SandboxInvalidRequest):
        await client.list_dir(sandbox.sandbox_id, "d/file")
    with pytest.raises(SandboxInvalidRequest):
        await client.read_file(sandbox.sandbox_id, "d")
    with pytest.raises(SandboxInvalidRequest):
        await client.read_file(sandbox.sandbox_id, "nope")


@pytest.mark.parametrize(
    "path",
    ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x", "/workspace/../etc/passwd"],
)
async def test_paths_outside_the_workspace_are_refused(
    client: SandboxClient, sandbox: pb.SandboxInfo, path: str
) -> None:
    path = path.replace("/workspace", sandbox.workdir)
    with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
        await client.read_file(sandbox.sandbox_id, path)
    with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
        await client.write_file(sandbox.sandbox_id, path, b"x")
    with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
        await client.stat(sandbox.sandbox_id, path)


async def test_symlinks_pointing_out_are_refused(
    client: SandboxClient, sandbox: pb.SandboxInfo, sandbox_host: RunningHost
) -> None:
    outside = sandbox_host.state_dir / "outside.txt"
    outside.write_text("host secret")
    await client.exec(
        sandbox.sandbox_id,
        shell=f"ln -s /etc/passwd abs && ln -s ../../../.. up && ln -s {outside} host && mkdir d && ln -s ../.. d/up2",
    )
    for path in ("abs", "up/etc/passwd", "host", "d/up2/x", "d/up2"):
        with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
            await client.read_file(sandbox.sandbox_id, path)
        with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
            await client.write_file(sandbox.sandbox_id, path, b"overwritten")
    with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
        await client.write_file(sandbox.sandbox_id, "up/new-file", b"x")
    assert outside.read_text() == "host secret"
    # Links that stay inside work, relative or absolute.
    await client.exec(
        sandbox.sandbox_id, shell=f"echo inside > real && ln -s real rel && ln -s {sandbox.workdir}/real absin"
    )
    assert await client.read_file(sandbox.sandbox_id, "rel") == b"inside\n"
    assert await client.read_file(sandbox.sandbox_id, "absin") == b"inside\n"
    await client.write_file(sandbox.sandbox_id, "rel", b"through the link")
    assert await client.read_file(sandbox.sandbox_id, "real") == b"through the link"


async def test_fifo_is_refused_without_hanging(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    await client.exec(sandbox.sandbox_id, argv=["mkfifo", "pipe"])
    with pytest.raises(SandboxInvalidRequest, match="not a regular file"):
        await client.read_file(sandbox.sandbox_id, "pipe")


# ----- workspace snapshots


async def test_manifest_export_import_round_trip(
    client: SandboxClient, sandbox_host: RunningHost, sandbox: pb.SandboxInfo
) -> None:
    await client.exec(
        sandbox.sandbox_id,
        shell="mkdir -p src/empty && echo a > src/a.txt && ln -s a.txt src/link && chmod 755 src/a.txt",
    )
    await client.write_file(sandbox.sandbox_id, "bin.dat", os.urandom(70_000))
    manifest = {e.path: e for e in await client.manifest(sandbox.sandbox_id)}
    assert set(manifest) == {"bin.dat", "src/a.txt", "src/link"}
    assert manifest["src/a.txt"].sha256 == "87428fc522803d31065e7bce3cf03fe475096631e5e07bbd7a0fde60c4cf25c7"
    assert stat.S_ISLNK(manifest["src/link"].mode)
    assert stat.S_IMODE(manifest["src/a.txt"].mode) == 0o755
    assert {e.path for e in await client.manifest(sandbox.sandbox_id, ["src"])} == {"src/a.txt", "src/link"}

    tar_bytes = b"".join([chunk async for chunk in client.export(sandbox.sandbox_id)])
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = set(tar.getnames())
    assert {"bin.dat", "src", "src/a.txt", "src/link", "src/empty"} <= names

    fresh = await client.provision(sandbox_host.recipe)
    result = await client.import_tar(fresh.sandbox_id, tar_bytes)
    assert result.files == 3
    restored = {e.path: e for e in await client.manifest(fresh.sandbox_id)}
    assert {p: (e.sha256, e.mode) for p, e in restored.items()} == {p: (e.sha256, e.mode) for p, e in manifest.items()}
    assert (await client.stat(fresh.sandbox_id, "src/empty")).kind == pb.FileInfo.DIRECTORY


async def test_import_refuses_members_that_escape(client: SandboxClient, sandbox: pb.SandboxInfo) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
        await client.import_tar(sandbox.sandbox_id, buffer.getvalue())


# ----- the local provider only


async def test_local_bubblewrap_hides_the_host(local_sandbox_host: RunningHost, tmp_path: Path) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        info = await client.provision(local_sandbox_host.recipe)
        if not info.isolation.startswith("bubblewrap"):
            pytest.skip(f"bubblewrap is not usable here: {info.isolation}")
        assert info.workdir == "/workspace"
        assert info.warnings == []
        for hidden in (Path.home(), local_sandbox_host.state_dir, tmp_path, Path("/etc/shadow")):
            assert hidden.exists()
            probe = await client.exec(info.sandbox_id, argv=["ls", str(hidden)])
            assert probe.exit_code != 0, f"{hidden} is visible in the sandbox"
            assert b"No such file or directory" in probe.stderr
        home = await client.exec(info.sandbox_id, shell="echo $HOME")
        assert home.stdout == b"/tmp/home\n"
        readonly = await client.exec(info.sandbox_id, argv=["touch", "/usr/tether-probe"])
        assert b"Read-only file system" in readonly.stderr
        net = await client.exec(info.sandbox_id, argv=["cat", "/proc/net/dev"])
        interfaces = [line.split(":")[0].strip() for line in net.stdout.decode().splitlines()[2:]]
        assert interfaces == ["lo"]


async def test_local_tmp_persists_between_commands_of_one_sandbox(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        one = await client.provision(local_sandbox_host.recipe)
        if not one.isolation.startswith("bubblewrap"):
            pytest.skip(f"without bubblewrap /tmp is the host's own: {one.isolation}")
        two = await client.provision(local_sandbox_host.recipe)
        await client.exec(one.sandbox_id, shell="echo kept > /tmp/note")
        assert (await client.exec(one.sandbox_id, shell="cat /tmp/note")).stdout == b"kept\n"
        assert (await client.exec(two.sandbox_id, shell="cat /tmp/note")).exit_code != 0


async def test_local_without_bubblewrap_warns_and_still_kills_the_group(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    provider = LocalProvider(use_bwrap=False)
    host = SandboxHost(
        HostConfig(listen="127.0.0.1:0", tokens={token: "t"}, state_dir=tmp_path / "state"), provider=provider
    )
    address = await host.start()
    try:
        async with SandboxClient(f"grpc://{address}", token) as client:
            info = await client.provision(recipe_for("local"))
            assert info.isolation.startswith("none")
            assert any("no security boundary" in warning for warning in info.warnings)
            assert info.workdir == str(tmp_path / "state" / "sandboxes" / info.sandbox_id / "workspace")
            await client.write_file(info.sandbox_id, "x.txt", b"plain")
            assert (await client.exec(info.sandbox_id, argv=["cat", "x.txt"])).stdout == b"plain"
            marker = f"tether-marker-{secrets.token_hex(6)}"
            stream = client.exec_stream(info.sandbox_id, shell=background_marker_script(marker), timeout_ms=2000)
            await wait_for_ready_line(stream)
            alive = marker_pids(marker)
            assert alive
            async for _event in stream:
                pass
            assert await asyncio.to_thread(wait_pids_gone, alive, WAIT_S) == []
            spill = await client.exec(info.sandbox_id, shell="seq 1 5000", output_cap=100)
            assert spill.truncated
            assert spill.spill_path.startswith(str(tmp_path / "state"))
            assert (await client.read_file(info.sandbox_id, spill.spill_path)).startswith(b"1\n2\n")
    finally:
        await host.stop()


async def test_local_background_process_does_not_outlive_its_command(local_sandbox_host: RunningHost) -> None:
    marker = f"tether-marker-{secrets.token_hex(6)}"
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = await client.provision(local_sandbox_host.recipe)
        result = await client.exec(
            sandbox.sandbox_id, shell=f"sh -c 'sleep 1000; true' {marker} >/dev/null 2>&1 & echo started"
        )
    assert result.stdout == b"started\n"
    assert await asyncio.to_thread(wait_pids_gone, marker_pids(marker), WAIT_S) == []


async def test_idle_sandboxes_are_reaped_but_busy_ones_are_not(local_sandbox_host: RunningHost) -> None:
    host = local_sandbox_host.host
    assert host is not None
    expiring = pb.Recipe()
    expiring.CopyFrom(local_sandbox_host.recipe)
    expiring.idle_ttl_seconds = 60
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        idle = await client.provision(expiring)
        busy = await client.provision(expiring)
        forever = await client.provision(local_sandbox_host.recipe)
        stream = client.exec_stream(busy.sandbox_id, shell="echo ready; sleep 1000", timeout_ms=600_000)
        await wait_for_ready_line(stream)
        assert await host.reap_idle() == [], "nothing is idle yet"

        reaped = await host.reap_idle(now_ms=int(time.time() * 1000) + 61_000)

        assert reaped == [idle.sandbox_id]
        with pytest.raises(SandboxGone):
            await client.get(idle.sandbox_id)
        assert (await client.get(busy.sandbox_id)).state == pb.SandboxInfo.RUNNING
        assert (await client.get(forever.sandbox_id)).state == pb.SandboxInfo.RUNNING
        await stream.aclose()


@pytest.mark.parametrize("keep", [False, True], ids=["destroy", "keep"])
async def test_sigterm_stops_the_host_and_kills_running_commands(tmp_path: Path, keep: bool) -> None:
    marker = f"tether-marker-{secrets.token_hex(6)}"
    extra = ["--keep-sandboxes"] if keep else []
    with sandbox_host_process("local", state_dir=tmp_path / "state", extra_args=extra) as host:
        assert host.process is not None
        async with SandboxClient(host.target, host.token) as client:
            info = await client.provision(host.recipe)
            ready = asyncio.Event()
            running = asyncio.ensure_future(
                client.exec(
                    info.sandbox_id,
                    shell=background_marker_script(marker),
                    timeout_ms=600_000,
                    on_output=lambda _stream, data: ready.set() if b"ready" in data else None,
                )
            )
            await asyncio.wait_for(ready.wait(), WAIT_S)
            alive = marker_pids(marker)
            assert alive

            host.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(host.process.wait, WAIT_S)

            assert code == 0
            with pytest.raises(HostUnreachable):
                await asyncio.wait_for(running, WAIT_S)
            assert await asyncio.to_thread(wait_pids_gone, alive, WAIT_S) == []
    left = list((tmp_path / "state" / "sandboxes").iterdir())
    assert [p.name for p in left] == ([info.sandbox_id] if keep else [])
