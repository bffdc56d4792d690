"""Bearer-token authentication of the sandbox host, over real gRPC (TCP, unix socket, TLS)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.sandbox_client import HostUnreachable, SandboxAuthError, SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox.auth import TokenFileError, TokenTable, parse_token_lines, tenant_for_token
from remote_sandbox.providers.local import LocalProvider
from remote_sandbox.registry import SandboxRegistry
from remote_sandbox.server import HostConfig, HostStartError, SandboxHost
from remote_sandbox.service import SandboxService
from tests.fixtures.sandbox_host import RunningHost, recipe_for, sandbox_host_process

QUICK_S = 5.0
"""A refused token must be reported well within this."""


@pytest.mark.parametrize("token", [None, "not-the-right-token-at-all"], ids=["missing", "wrong"])
async def test_bad_token_is_an_auth_error_quickly(local_sandbox_host: RunningHost, token: str | None) -> None:
    async with SandboxClient(local_sandbox_host.target, token) as client:
        started = time.monotonic()
        with pytest.raises(SandboxAuthError) as caught:
            await client.wait_ready(timeout=QUICK_S)
        assert time.monotonic() - started < QUICK_S
        message = str(caught.value)
        assert "authentication" in message
        assert local_sandbox_host.target in message
        with pytest.raises(SandboxAuthError):
            await client.provision(local_sandbox_host.recipe)
        with pytest.raises(SandboxAuthError):
            await client.exec("sb-whatever", shell="true")
        with pytest.raises(SandboxAuthError):
            await client.write_file("sb-whatever", "x", b"data")


async def test_good_token_passes_wait_ready(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        await client.wait_ready(timeout=QUICK_S)
        assert await client.list() == []


async def test_health_and_reflection_answer_without_a_token(local_sandbox_host: RunningHost) -> None:
    address = local_sandbox_host.target.removeprefix("grpc://")
    async with grpc.aio.insecure_channel(address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=QUICK_S
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        named = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tether.sandbox.v1.Sandbox"), timeout=QUICK_S
        )
        assert named.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> reflection_pb2.ServerReflectionRequest:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        services = []
        async for response in stub.ServerReflectionInfo(ask(), timeout=QUICK_S):
            services += [s.name for s in response.list_services_response.service]
        assert "tether.sandbox.v1.Sandbox" in services


async def test_unreachable_host_is_reported_as_such(tmp_path: Path) -> None:
    async with SandboxClient(f"unix://{tmp_path}/nobody-listens.sock", "x" * 32) as client:
        with pytest.raises(HostUnreachable, match="no sandbox host listens at unix:.*is the host running"):
            await client.wait_ready(timeout=0.5)
        with pytest.raises(HostUnreachable):
            await client.list()


def test_token_lines_name_tenants_or_derive_them() -> None:
    token_a, token_b = "a" * 32, "b" * 32
    tokens = parse_token_lines(["# comment", "", f"alice {token_a}  # trailing comment", token_b])
    assert tokens == {token_a: "alice", token_b: tenant_for_token(token_b)}
    assert tenant_for_token(token_b).startswith("t-") and len(tenant_for_token(token_b)) == 10
    table = TokenTable(tokens)
    assert table.tenant(token_a) == "alice"
    assert table.tenant("a" * 31) is None
    assert table.tenant(None) is None
    assert table.tenant_from_metadata([("authorization", f"Bearer {token_b}")]) == tenant_for_token(token_b)
    assert table.tenant_from_metadata([("authorization", f"Basic {token_b}")]) is None


@pytest.mark.parametrize(
    ("lines", "complaint"),
    [
        (["short"], "at least 16"),
        (["a b c"], "TENANT TOKEN"),
        (["bad/tenant " + "x" * 32], "tenant"),
        ([f"one {'x' * 32}", f"two {'x' * 32}"], "already given"),
    ],
)
def test_bad_token_lines_are_refused_with_the_line_number(lines: list[str], complaint: str) -> None:
    with pytest.raises(TokenFileError, match=complaint) as caught:
        parse_token_lines(lines, source="tokens.txt")
    assert "tokens.txt, line" in str(caught.value)


def test_a_host_without_tokens_refuses_to_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        SandboxHost(HostConfig(listen="127.0.0.1:0", state_dir=tmp_path))


def test_serve_without_token_file_explains_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "remote_sandbox", "serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "token file is required" in result.stderr
    assert result.stdout == ""


async def test_two_hosts_cannot_share_a_state_dir(local_sandbox_host: RunningHost) -> None:
    second = SandboxHost(
        HostConfig(listen="127.0.0.1:0", tokens={"x" * 32: "t"}, state_dir=local_sandbox_host.state_dir)
    )
    with pytest.raises(HostStartError, match="another sandbox host"):
        await second.start()


async def test_port_in_use_is_a_clear_start_error(local_sandbox_host: RunningHost, tmp_path: Path) -> None:
    taken = local_sandbox_host.target.removeprefix("grpc://")
    second = SandboxHost(HostConfig(listen=taken, tokens={"x" * 32: "t"}, state_dir=tmp_path / "second"))
    with pytest.raises(HostStartError, match="cannot listen"):
        await second.start()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_cli_host_end_to_end(tmp_path: Path, transport: str) -> None:
    listen = "127.0.0.1:0" if transport == "tcp" else f"unix://{tmp_path}/host.sock"
    with sandbox_host_process("local", state_dir=tmp_path / "state", listen=listen) as host:
        async with SandboxClient(host.target, "wrong-token-wrong-token") as intruder:
            with pytest.raises(SandboxAuthError):
                await intruder.wait_ready(timeout=QUICK_S)
        async with SandboxClient(host.target, host.token) as client:
            await client.wait_ready(timeout=QUICK_S)
            info = await client.provision(host.recipe)
            result = await client.exec(info.sandbox_id, shell="echo via the cli")
            assert result.stdout == b"via the cli\n"
    assert list((tmp_path / "state" / "sandboxes").iterdir()) == [], "a stopped host destroys its sandboxes"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_tls_host_with_a_ca_file(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    token = secrets.token_hex(16)
    host = SandboxHost(
        HostConfig(listen="127.0.0.1:0", tokens={token: "t"}, state_dir=tmp_path / "state", tls_cert=cert, tls_key=key)
    )
    address = await host.start()
    try:
        port = address.rsplit(":", 1)[1]
        async with SandboxClient(f"grpcs://localhost:{port}", token, ca_file=str(cert)) as client:
            await client.wait_ready(timeout=QUICK_S)
            info = await client.provision(recipe_for("local"))
            assert (await client.exec(info.sandbox_id, shell="echo secure")).stdout == b"secure\n"
        async with SandboxClient(f"grpc://127.0.0.1:{port}", token) as plaintext:
            with pytest.raises(HostUnreachable):
                await plaintext.wait_ready(timeout=1.0)
    finally:
        await host.stop()


async def test_host_stop_cancels_running_commands(local_sandbox_host: RunningHost) -> None:
    assert local_sandbox_host.host is not None
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        info = await client.provision(local_sandbox_host.recipe)
        started = asyncio.Event()

        def on_output(stream: int, data: bytes) -> None:
            started.set()

        running = asyncio.ensure_future(
            client.exec(info.sandbox_id, shell="echo go; sleep 1000", timeout_ms=600_000, on_output=on_output)
        )
        await asyncio.wait_for(started.wait(), QUICK_S)
        await local_sandbox_host.host.stop(grace=0.5)
        with pytest.raises(HostUnreachable):
            await asyncio.wait_for(running, QUICK_S * 2)
    assert list((local_sandbox_host.state_dir / "sandboxes").iterdir()) == []


async def test_unix_socket_left_by_a_dead_host_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "host.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # bound but nobody listens: what a SIGKILLed host leaves behind
    token = secrets.token_hex(16)
    first = SandboxHost(HostConfig(listen=f"unix://{path}", tokens={token: "t"}, state_dir=tmp_path / "one"))
    assert await first.start() == f"unix://{path}"
    try:
        async with SandboxClient(f"unix://{path}", token) as client:
            await client.wait_ready(timeout=QUICK_S)
        second = SandboxHost(HostConfig(listen=f"unix://{path}", tokens={token: "t"}, state_dir=tmp_path / "two"))
        with pytest.raises(HostStartError, match="another server is listening"):
            await second.start()
    finally:
        await first.stop()
    assert not path.exists(), "a stopped host removes its socket"


async def test_the_service_trusts_only_the_tenant_the_interceptor_resolved(tmp_path: Path) -> None:
    """Served without the interceptor, every call is refused, even one carrying a valid token: one check, failing closed."""
    token = secrets.token_hex(16)
    registry = SandboxRegistry(HostConfig(listen="", tokens={token: "t"}), tmp_path / "state")
    registry.provider = LocalProvider()
    server = grpc.aio.server()
    pb_grpc.add_SandboxServicer_to_server(SandboxService(registry, registry.provider, registry.config), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.SandboxStub(channel).ListSandboxes(
                    pb.ListSandboxesRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=QUICK_S
                )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
        await registry.provider.close()


async def test_concurrent_calls_of_two_tenants_each_act_as_their_own(local_sandbox_host: RunningHost) -> None:
    """The tenant travels with each call: many calls of two tenants at once never see each other's sandboxes."""
    host = local_sandbox_host
    async with SandboxClient(host.target, host.token) as a, SandboxClient(host.target, host.other_token) as b:
        mine = await a.provision(host.recipe)
        theirs = await b.provision(host.recipe)
        lists = await asyncio.gather(*(client.list() for _ in range(20) for client in (a, b)))
        for i, seen in enumerate(lists):
            expected = mine if i % 2 == 0 else theirs
            assert [s.sandbox_id for s in seen] == [expected.sandbox_id]
