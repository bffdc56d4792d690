"""The docker provider against a real engine and the busybox test image."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import docker
import docker.errors
import pytest

from protos.recipes import load_recipe
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.providers.base import (
    ExecSpec,
    InvalidRequest,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxRecord,
)
from remote_sandbox.providers.docker import DockerProvider
from tests.fixtures.docker_provider import Sandboxes, collect, processes, shell

pytestmark = pytest.mark.docker


def container_of(docker_engine: docker.DockerClient, record: SandboxRecord) -> dict:
    """``docker inspect`` of the sandbox's container."""
    found = docker_engine.api.containers(all=True, filters={"label": f"tether.sandbox={record.sandbox_id}"})
    assert len(found) == 1, found
    return docker_engine.api.inspect_container(found[0]["Id"])


# ----- lifecycle


async def test_provision_sets_labels_limits_and_security(
    sandboxes: Sandboxes, docker_engine: docker.DockerClient, host_id: str
) -> None:
    record = await sandboxes.new(
        limits=pb.Limits(pids=77, memory_bytes=256 << 20, cpus=0.5),
        idle_ttl_seconds=900,
        labels={"team": "blue"},
    )
    inspected = container_of(docker_engine, record)
    labels = inspected["Config"]["Labels"]
    assert labels["tether.sandbox"] == record.sandbox_id
    assert labels["tether.host"] == host_id
    assert labels["tether.tenant"] == "tenant-a"
    assert labels["tether.ttl"] == "900"
    assert labels["team"] == "blue"
    host_config = inspected["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["PidsLimit"] == 77
    assert host_config["Memory"] == 256 << 20
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["NetworkMode"] == "none"
    assert host_config["Init"] is True
    assert inspected["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert inspected["State"]["Running"] is True
    assert record.isolation == "docker"
    assert record.os.startswith("Linux ")
    assert await sandboxes.provider.is_running(record)


async def test_destroy_removes_the_container_and_is_idempotent(
    sandbox: SandboxRecord, provider: DockerProvider, docker_engine: docker.DockerClient
) -> None:
    container_id = container_of(docker_engine, sandbox)["Id"]
    await provider.destroy(sandbox)
    with pytest.raises(docker.errors.NotFound):
        docker_engine.api.inspect_container(container_id)
    assert not await provider.is_running(sandbox)
    await provider.destroy(sandbox)


async def test_network_is_off_unless_the_recipe_asks(sandboxes: Sandboxes, docker_engine: docker.DockerClient) -> None:
    closed = await sandboxes.new()
    opened = await sandboxes.new(network=True)
    assert container_of(docker_engine, closed)["HostConfig"]["NetworkMode"] == "none"
    assert container_of(docker_engine, opened)["HostConfig"]["NetworkMode"] == "bridge"
    interfaces = await collect(sandboxes.provider, closed, shell("ls /sys/class/net"))
    assert interfaces.stdout.split() == [b"lo"]


async def test_recipe_without_image_uses_the_default_image(
    docker_engine: docker.DockerClient, host_id: str, tmp_path: Path, docker_test_image: str
) -> None:
    provider = DockerProvider(default_image=docker_test_image, host_id=host_id, client=docker_engine)
    made = Sandboxes(provider, tmp_path, "")
    try:
        record = await made.new()
        assert container_of(docker_engine, record)["Config"]["Image"] == docker_test_image
    finally:
        for record in made.records:
            await provider.destroy(record)


async def test_the_test_image_recipe_provisions(sandboxes: Sandboxes, docker_engine: docker.DockerClient) -> None:
    recipe = load_recipe(str(Path(__file__).parent / "images" / "busybox.toml"))
    record = await sandboxes.new(image=recipe.image, limits=recipe.limits, labels=recipe.labels)
    assert container_of(docker_engine, record)["HostConfig"]["PidsLimit"] == recipe.limits.pids
    assert (await collect(sandboxes.provider, record, shell("echo ok"))).stdout == b"ok\n"


async def test_recipe_without_image_is_refused(sandboxes: Sandboxes) -> None:
    with pytest.raises(InvalidRequest, match="no image") as refused:
        await sandboxes.new(image="")
    # The message names both ways out: the recipe key and the host's flag.
    assert "image = " in str(refused.value) and "--default-image" in str(refused.value)


async def test_workdir_over_the_exec_server_is_refused(sandboxes: Sandboxes) -> None:
    with pytest.raises(InvalidRequest, match="overlaps"):
        await sandboxes.new(workdir="/run")


async def test_missing_image_is_refused(sandboxes: Sandboxes) -> None:
    with pytest.raises(InvalidRequest, match="not on this docker host"):
        await sandboxes.new(image="tether-test:no-such-tag")


async def test_setup_runs_once_in_the_workspace(sandboxes: Sandboxes) -> None:
    record = await sandboxes.new(setup=["echo one >> setup.log", "pwd >> setup.log"])
    assert (record.workspace / "setup.log").read_text() == "one\n/workspace\n"


async def test_failing_setup_raises_with_its_output_and_leaves_no_container(
    sandboxes: Sandboxes, docker_engine: docker.DockerClient
) -> None:
    with pytest.raises(SandboxNotRunning, match="(?s)exited with code 7.*no such tool"):
        await sandboxes.new(setup=["true", "echo no such tool >&2; exit 7"])
    record = sandboxes.records[-1]
    assert docker_engine.api.containers(all=True, filters={"label": f"tether.sandbox={record.sandbox_id}"}) == []


async def test_reconcile_removes_containers_left_by_an_earlier_run(
    sandboxes: Sandboxes, docker_engine: docker.DockerClient, host_id: str, docker_test_image: str
) -> None:
    first = await sandboxes.new()
    second = await sandboxes.new()
    stopped = docker_engine.containers.create(docker_test_image, ["true"], labels={"tether.host": host_id})
    bystander = docker_engine.containers.create(docker_test_image, ["true"], labels={"tether.host": "someone-else"})
    expected = {container_of(docker_engine, r)["Id"] for r in (first, second)} | {stopped.id}
    try:
        restarted = DockerProvider(host_id=host_id, client=docker_engine)
        removed = await restarted.reconcile(host_id)
        assert set(removed) == expected
        assert docker_engine.api.containers(all=True, filters={"label": f"tether.host={host_id}"}) == []
        docker_engine.api.inspect_container(bystander.id)  # untouched
    finally:
        bystander.remove(force=True)


# ----- exec


async def test_stdout_and_stderr_arrive_apart_with_the_exit_code(
    sandbox: SandboxRecord, provider: DockerProvider
) -> None:
    outcome = await collect(provider, sandbox, shell("echo to-out; echo to-err >&2; exit 3"))
    assert outcome.stdout == b"to-out\n"
    assert outcome.stderr == b"to-err\n"
    assert outcome.exited.exit_code == 3
    assert outcome.exited.signal == 0
    assert not outcome.exited.timed_out
    assert (outcome.exited.stdout_bytes, outcome.exited.stderr_bytes) == (7, 7)
    assert outcome.order[0] == "started" and outcome.order[-1] == "exited"
    assert outcome.pid > 1


async def test_output_is_bytes_not_text(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    outcome = await collect(provider, sandbox, shell(r"printf '\377\000\001'"))
    assert outcome.stdout == b"\xff\x00\x01"


async def test_argv_is_passed_verbatim(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    args = ["a b", "$HOME", "'quoted'", '"double"', "semi;colon", ""]
    spec = ExecSpec(argv=["printf", "[%s]\\n", *args], shell=None, cwd="/workspace")
    outcome = await collect(provider, sandbox, spec)
    assert outcome.stdout.decode().splitlines() == [f"[{arg}]" for arg in args]


async def test_missing_program_exits_127(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    spec = ExecSpec(argv=["no-such-program"], shell=None, cwd="/workspace")
    outcome = await collect(provider, sandbox, spec)
    assert outcome.exited.exit_code == 127
    assert b"no-such-program" in outcome.stderr


async def test_stdin_is_fed_then_closed(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    payload = bytes(range(256)) * 1000
    outcome = await collect(provider, sandbox, shell("cat; echo end", stdin=payload))
    assert outcome.stdout == payload + b"end\n"
    empty = await collect(provider, sandbox, shell("wc -c"))
    assert empty.stdout.strip() == b"0"


async def test_env_adds_to_the_recipe_env(sandboxes: Sandboxes) -> None:
    record = await sandboxes.new(env={"FROM_RECIPE": "r", "BOTH": "recipe"})
    spec = shell(
        'echo "$FROM_RECIPE $FROM_SPEC $BOTH"',
        env={"FROM_SPEC": 'it\'s "quoted" $x', "BOTH": "spec"},
    )
    outcome = await collect(sandboxes.provider, record, spec)
    assert outcome.stdout == b'r it\'s "quoted" $x spec\n'


async def test_bad_env_name_is_refused(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    with pytest.raises(InvalidRequest, match="not valid"):
        await collect(provider, sandbox, shell("true", env={"A-B; rm -rf /": "x"}))


async def test_cwd_and_report_cwd(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    (sandbox.workspace / "sub dir").mkdir()
    outcome = await collect(provider, sandbox, shell("pwd; cd /tmp", cwd="/workspace/sub dir", report_cwd=True))
    assert outcome.stdout == b"/workspace/sub dir\n"
    assert outcome.exited.cwd == "/tmp"
    after_exit = await collect(provider, sandbox, shell("cd /etc; exit 4", report_cwd=True))
    assert (after_exit.exited.exit_code, after_exit.exited.cwd) == (4, "/etc")
    unreported = await collect(provider, sandbox, shell("cd /tmp"))
    assert unreported.exited.cwd == ""
    argv = await collect(provider, sandbox, ExecSpec(argv=["pwd"], shell=None, cwd="/workspace/sub dir"))
    assert argv.stdout == b"/workspace/sub dir\n"


async def test_missing_cwd_fails_the_command(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    outcome = await collect(provider, sandbox, shell("echo ran", cwd="/workspace/nope"))
    assert outcome.exited.exit_code != 0
    assert outcome.stdout == b""
    assert b"nope" in outcome.stderr


async def test_files_in_the_workspace_belong_to_the_host_user(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    await collect(provider, sandbox, shell("mkdir -p made && echo x > made/file"))
    made = sandbox.workspace / "made" / "file"
    assert made.read_text() == "x\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (os.getuid(), os.getgid())


async def test_command_runs_in_its_own_process_group(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    outcome = await collect(provider, sandbox, shell("cut -d' ' -f5 /proc/$$/stat; echo $$"))
    pgid, pid = outcome.stdout.split()
    assert int(pgid) == int(pid) == outcome.pid


async def test_timeout_kills_the_whole_group(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    command = "sleep 1001 & sleep 1002 & (sleep 1003 &) ; echo started; wait"
    outcome = await collect(provider, sandbox, shell(command, timeout_s=1.0))
    assert outcome.stdout == b"started\n"
    assert outcome.exited.timed_out
    assert outcome.exited.exit_code == -1
    assert outcome.exited.signal == 9
    assert outcome.exited.duration_ms >= 1000
    survivors = await processes(provider, sandbox)
    assert "sleep 100" not in survivors, survivors


async def test_leftover_background_output_holds_the_call_until_timeout(
    sandbox: SandboxRecord, provider: DockerProvider
) -> None:
    # Like a pipe from a subprocess: output stays open while a child holds it.
    outcome = await collect(provider, sandbox, shell("sleep 1004 & echo parent-done", timeout_s=1.0))
    assert outcome.stdout == b"parent-done\n"
    assert outcome.exited.timed_out
    assert outcome.exited.exit_code == 0  # the leader itself exited normally
    assert "sleep 1004" not in await processes(provider, sandbox)


async def test_redirected_background_job_outlives_the_call(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    outcome = await collect(provider, sandbox, shell("sleep 1005 >/dev/null 2>&1 & echo bg"))
    assert outcome.stdout == b"bg\n" and not outcome.exited.timed_out
    assert "sleep 1005" in await processes(provider, sandbox)


async def test_cancelling_the_stream_kills_the_whole_group(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    events = provider.exec(sandbox, shell("sleep 1006 & sleep 1007 & echo ready; wait", timeout_s=60))
    seen = b""
    async for event in events:
        if event.HasField("output"):
            seen += event.output.data
            if b"ready\n" in seen:
                break
    await events.aclose()
    survivors = await processes(provider, sandbox)
    assert "sleep 1006" not in survivors and "sleep 1007" not in survivors, survivors


async def test_cancelling_the_consumer_task_kills_the_whole_group(
    sandbox: SandboxRecord, provider: DockerProvider
) -> None:
    ready = asyncio.Event()

    async def consume() -> None:
        async for event in provider.exec(sandbox, shell("sleep 1008 & echo ready; wait", timeout_s=60)):
            if event.HasField("output") and b"ready" in event.output.data:
                ready.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(ready.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "sleep 1008" not in await processes(provider, sandbox)


async def test_output_past_the_cap_goes_to_the_spill_file(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    command = "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; echo tail >&2"
    outcome = await collect(provider, sandbox, shell(command, output_cap=100))
    full_stdout = "".join(f"line-{i}\n" for i in range(2000)).encode()
    assert len(outcome.stdout) + len(outcome.stderr) == 100
    assert full_stdout.startswith(outcome.stdout)
    assert outcome.exited.truncated
    assert outcome.exited.stdout_bytes == len(full_stdout)
    assert outcome.exited.stderr_bytes == 5
    spill_path = outcome.exited.spill_path
    assert spill_path.startswith(f"{sandbox.spill_mount}/")
    host_spill = sandbox.workspace.parent / "spill" / spill_path.removeprefix(f"{sandbox.spill_mount}/")
    assert host_spill.read_bytes() == full_stdout + b"tail\n"
    assert [path.name for path in host_spill.parent.iterdir()] == [host_spill.name]
    inside = await collect(provider, sandbox, shell(f"wc -c < {spill_path}"))
    assert int(inside.stdout) == len(full_stdout) + 5


async def test_output_under_the_cap_is_not_spilled(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    outcome = await collect(provider, sandbox, shell("echo small", output_cap=100))
    assert not outcome.exited.truncated and outcome.exited.spill_path == ""


async def test_large_output_streams_whole(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    outcome = await collect(provider, sandbox, shell("head -c 5000000 /dev/zero", output_cap=10 << 20))
    assert outcome.stdout == bytes(5_000_000)
    assert not outcome.exited.truncated


async def test_commands_run_concurrently(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    # Each waits for the next one's file, so they finish only if all run at once.
    specs = [
        shell(f"touch /tmp/c{i}; while [ ! -e /tmp/c{(i + 1) % 4} ]; do :; done; echo {i}", timeout_s=30)
        for i in range(4)
    ]
    outcomes = await asyncio.gather(*(collect(provider, sandbox, spec) for spec in specs))
    assert [o.stdout for o in outcomes] == [f"{i}\n".encode() for i in range(4)]


async def test_removed_container_is_not_found(
    sandbox: SandboxRecord, provider: DockerProvider, docker_engine: docker.DockerClient
) -> None:
    docker_engine.api.remove_container(container_of(docker_engine, sandbox)["Id"], force=True)
    with pytest.raises(SandboxNotFound):
        await collect(provider, sandbox, shell("true"))
    assert not await provider.is_running(sandbox)


async def test_killed_container_is_not_found(
    sandbox: SandboxRecord, provider: DockerProvider, docker_engine: docker.DockerClient
) -> None:
    container_id = container_of(docker_engine, sandbox)["Id"]
    docker_engine.api.kill(container_id)
    docker_engine.api.wait(container_id, timeout=30)
    with pytest.raises(SandboxNotFound):
        await collect(provider, sandbox, shell("true"))
    assert not await provider.is_running(sandbox)


async def test_container_killed_mid_command_is_not_found(
    sandbox: SandboxRecord, provider: DockerProvider, docker_engine: docker.DockerClient
) -> None:
    container_id = container_of(docker_engine, sandbox)["Id"]
    events = provider.exec(sandbox, shell("echo ready; sleep 1009", timeout_s=60))
    with pytest.raises(SandboxNotFound):
        async for event in events:
            if event.HasField("output"):
                await asyncio.to_thread(docker_engine.api.kill, container_id)


async def test_exec_server_killed_by_a_command_is_restarted(sandbox: SandboxRecord, provider: DockerProvider) -> None:
    # The server came from a docker exec, so its parent is outside the container: ppid 0.
    servers = "ps -o pid,ppid,args | awk '$2 == 0 && /server.sh/ {print $1}'"
    first = (await collect(provider, sandbox, shell(servers))).stdout.split()
    assert len(first) == 1
    killed = await collect(provider, sandbox, shell(f"kill -9 {first[0].decode()}; echo done"))
    assert killed.stdout == b"done\n"
    after = await collect(provider, sandbox, shell("echo alive"))
    assert after.stdout == b"alive\n"
    second = (await collect(provider, sandbox, shell(servers))).stdout.split()
    assert len(second) == 1 and second != first


async def test_fork_bomb_is_held_by_the_pids_limit(sandboxes: Sandboxes) -> None:
    record = await sandboxes.new(limits=pb.Limits(pids=64))
    provider = sandboxes.provider
    # Every copy forks forever; only the pids limit holds it, until the timeout kills the group.
    # The bomb dies on its own once forks fail, or lives on: either way the leader waits on
    # a sleep started first, so the timeout must kill whatever of the group is left.
    command = "sleep 1010 & bomb() { while :; do bomb & done; }; (bomb) & wait"
    bomb = await collect(provider, record, shell(command, timeout_s=2.0))
    assert bomb.exited.timed_out
    assert b"can't fork" in bomb.stderr
    survivors = await processes(provider, record)
    assert "sleep 1010" not in survivors and survivors.count("\n") < 10, survivors
    after = await collect(provider, record, shell("echo still-here"))
    assert after.stdout == b"still-here\n"


async def test_shell_pid1_reaps_orphans_without_docker_init(
    docker_engine: docker.DockerClient, host_id: str, tmp_path: Path, docker_test_image: str
) -> None:
    provider = DockerProvider(host_id=host_id, client=docker_engine)
    provider._docker_init = False  # as on an engine without docker-init
    made = Sandboxes(provider, tmp_path, docker_test_image)
    try:
        record = await made.new()
        assert container_of(docker_engine, record)["HostConfig"]["Init"] is not True
        assert any("docker-init" in warning for warning in record.warnings)
        # Orphans exit right away; pid 1 must reap them. Wait for that, bounded.
        await collect(provider, record, shell("for i in 1 2 3 4 5; do (true &); done"))
        deadline = time.monotonic() + 20
        while True:
            states = (await collect(provider, record, shell("cat /proc/[0-9]*/stat"))).stdout.decode()
            zombies = [line for line in states.splitlines() if line.split(") ")[-1].startswith("Z")]
            if not zombies:
                break
            assert time.monotonic() < deadline, zombies
    finally:
        for record in made.records:
            await provider.destroy(record)
