"""A sandbox host SIGKILLed and started again on its state dir adopts the docker sandboxes left running."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent.sandbox_client import SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from tests.fixtures.sandbox_host import recipe_for
from tests.fixtures.tether_cli import TETHER, clean_env

pytestmark = pytest.mark.docker

TOKEN = "restart-test-token"


@contextlib.contextmanager
def serve(tmp: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``tether sandbox serve --provider docker`` on one state dir and one token; yields its target and process."""
    token_file = tmp / "tokens.txt"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    log = tmp / "host.log"
    argv = [*TETHER, "sandbox", "serve", "--provider", "docker", "--token-file", str(token_file)]
    argv += ["--state-dir", str(tmp / "state"), "--listen", "127.0.0.1:0", *extra]
    with open(log, "ab") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=clean_env(tmp), text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line, f"the host did not start: {line!r}\n{log.read_text()}"
        yield f"grpc://{line.rsplit(' ', 1)[1].strip()}", process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()


async def provision_then_kill(tmp: Path, image: str, shell: str) -> tuple[pb.SandboxInfo, str]:
    """Provision a sandbox on a host, run ``shell`` in it, SIGKILL the host; the sandbox and the host's target."""
    with serve(tmp) as (target, host):
        async with SandboxClient(target, TOKEN) as client:
            info = await client.provision(recipe_for("docker", image))
            assert (await client.exec(info.sandbox_id, shell=shell)).exit_code == 0
        host.send_signal(signal.SIGKILL)
        host.wait()
    return info, target


async def test_a_restarted_host_adopts_its_running_container(
    tmp_path: Path, docker_engine: docker.DockerClient, docker_test_image: str
) -> None:
    info, target = await provision_then_kill(tmp_path, docker_test_image, "echo survived > note.txt")
    port = target.rsplit(":", 1)[1]
    found = docker_engine.api.containers(filters={"label": f"tether.sandbox={info.sandbox_id}"})
    assert len(found) == 1, "the container outlives its host"
    with serve(tmp_path, "--listen", f"127.0.0.1:{port}") as (again, _second):
        assert again == target
        async with SandboxClient(again, TOKEN) as client:
            adopted = await client.get(info.sandbox_id)
            assert adopted.workdir == info.workdir and adopted.recipe.image == docker_test_image
            result = await client.exec(info.sandbox_id, argv=["cat", "note.txt"])
            assert (result.exit_code, result.stdout) == (0, b"survived\n")
            # New commands run on fresh workers, shell and argv alike, and it can be destroyed as usual.
            assert (await client.exec(info.sandbox_id, shell="echo again")).stdout == b"again\n"
            await client.destroy(info.sandbox_id)
    assert docker_engine.api.containers(all=True, filters={"label": f"tether.sandbox={info.sandbox_id}"}) == []


async def test_a_restarted_host_removes_a_stopped_container(
    tmp_path: Path, docker_engine: docker.DockerClient, docker_test_image: str
) -> None:
    info, _target = await provision_then_kill(tmp_path, docker_test_image, "true")
    (container,) = docker_engine.api.containers(filters={"label": f"tether.sandbox={info.sandbox_id}"})
    docker_engine.api.stop(container["Id"], timeout=0)
    with serve(tmp_path) as (again, _second):
        async with SandboxClient(again, TOKEN) as client:
            assert [s.sandbox_id for s in await client.list()] == []
    assert docker_engine.api.containers(all=True, filters={"label": f"tether.sandbox={info.sandbox_id}"}) == []
