"""Direct workspaces: an existing host directory as a sandbox's workspace, over real gRPC.

A host accepts one only under a root it was started to allow; commands' writes
land in the directory itself; destroying the sandbox, reaping it, or stopping
the host never removes or changes the directory.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.embedded_host import EmbeddedHost
from agent.sandbox_client import SandboxClient, SandboxInvalidRequest, SandboxPermissionDenied
from protos.recipes import load_recipe
from remote_sandbox import manifest as manifest_module
from tests.fixtures.sandbox_host import RunningHost, in_process_host


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``directory`` with its content, mode and mtime (symlinks by target)."""
    seen = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            seen[str(path.relative_to(directory))] = (os.readlink(path).encode(), st.st_mode, st.st_mtime_ns)
        elif path.is_file():
            seen[str(path.relative_to(directory))] = (path.read_bytes(), st.st_mode, st.st_mtime_ns)
        else:
            seen[str(path.relative_to(directory)) + "/"] = (b"", st.st_mode, 0)
    return seen


def _project(root: Path) -> Path:
    """A small user project under ``root``."""
    project = root / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')\n")
    (project / "README").write_text("readme\n")
    (project / "link").symlink_to("src/main.py")
    return project


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def direct_host(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningHost]:
    """A host that allows direct workspaces under ``tmp_path/allowed``, once per provider."""
    image = ""
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
        image = request.getfixturevalue("docker_test_image")
    (tmp_path / "allowed").mkdir()
    async with in_process_host(
        request.param, tmp_path / "host-state", image, allow_workspace_roots=[tmp_path / "allowed"]
    ) as host:
        yield host


async def test_refused_by_a_host_started_without_an_allowed_root(
    local_sandbox_host: RunningHost, tmp_path: Path
) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        with pytest.raises(SandboxPermissionDenied, match="--allow-workspace-root"):
            await client.provision(local_sandbox_host.recipe, workspace_dir=str(tmp_path))
        assert await client.list() == []


async def test_refused_outside_the_allowed_root_and_for_bad_paths(direct_host: RunningHost, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # A symlink inside the root that leads out is judged by where it leads.
    (tmp_path / "allowed" / "escape").symlink_to(outside)
    async with SandboxClient(direct_host.target, direct_host.token) as client:
        for refused in (outside, tmp_path / "allowed" / "escape", Path("/")):
            with pytest.raises(SandboxPermissionDenied, match="not under an allowed workspace root"):
                await client.provision(direct_host.recipe, workspace_dir=str(refused))
        with pytest.raises(SandboxInvalidRequest, match="absolute"):
            await client.provision(direct_host.recipe, workspace_dir="allowed/project")
        with pytest.raises(SandboxInvalidRequest, match="not an existing directory"):
            await client.provision(direct_host.recipe, workspace_dir=str(tmp_path / "allowed" / "missing"))
        assert await client.list() == []


async def test_commands_write_into_the_directory_and_destroy_leaves_it(
    direct_host: RunningHost, tmp_path: Path
) -> None:
    project = _project(tmp_path / "allowed")
    async with SandboxClient(direct_host.target, direct_host.token) as client:
        info = await client.provision(direct_host.recipe, workspace_dir=str(project))
        assert info.workspace_dir == str(project)
        result = await client.exec(info.sandbox_id, shell="echo x > f && cat src/main.py && ls")
        assert result.exit_code == 0, result.stderr
        assert b"print('hi')" in result.stdout
        assert (project / "f").read_text() == "x\n"
        # The file operations of the host see the same directory.
        assert await client.read_file(info.sandbox_id, "README") == b"readme\n"
        await client.write_file(info.sandbox_id, "written", b"by WriteFile")
        assert (project / "written").read_bytes() == b"by WriteFile"
        before = _snapshot(project)
        await client.destroy(info.sandbox_id)
    assert _snapshot(project) == before
    assert not any((direct_host.state_dir / "sandboxes").iterdir()), "the sandbox's own state was left behind"


async def test_reaper_and_host_shutdown_leave_the_directory(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    project = _project(allowed)
    before = _snapshot(project)
    async with in_process_host("local", tmp_path / "host-state", allow_workspace_roots=[allowed]) as host:
        assert host.host is not None
        recipe = host.recipe
        recipe.idle_ttl_seconds = 1
        async with SandboxClient(host.target, host.token) as client:
            reaped = await client.provision(recipe, workspace_dir=str(project))
            await client.exec(reaped.sandbox_id, shell="mkdir -p build && echo o > build/out")
            before = _snapshot(project)
            gone = await host.host.reap_idle(now_ms=reaped.last_used_unix_ms + 3_600_000)
            assert gone == [reaped.sandbox_id]
            assert _snapshot(project) == before
            survivor = await client.provision(host.recipe, workspace_dir=str(project))
            assert survivor.workspace_dir == str(project)
    # The host stopped with a live direct sandbox: its destroy-on-exit must spare the directory.
    assert _snapshot(project) == before


async def test_idempotent_provision_counts_the_directory(direct_host: RunningHost, tmp_path: Path) -> None:
    one = _project(tmp_path / "allowed")
    two = tmp_path / "allowed" / "two"
    two.mkdir()
    async with SandboxClient(direct_host.target, direct_host.token) as client:
        first = await client.provision(direct_host.recipe, request_id="r1", workspace_dir=str(one))
        again = await client.provision(direct_host.recipe, request_id="r1", workspace_dir=str(one))
        other = await client.provision(direct_host.recipe, request_id="r1", workspace_dir=str(two))
        assert first.sandbox_id == again.sandbox_id
        assert other.sandbox_id != first.sandbox_id
        assert other.workspace_dir == str(two)


async def test_bubblewrap_shows_only_the_directory_not_the_host(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    project = _project(allowed)
    # Secrets of the host user beside the project, as ~/.ssh would be: never visible.
    secret = allowed / "dot-ssh"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY\n")
    async with in_process_host("local", tmp_path / "host-state", allow_workspace_roots=[allowed]) as host:
        async with SandboxClient(host.target, host.token) as client:
            info = await client.provision(host.recipe, workspace_dir=str(project))
            if not info.isolation.startswith("bubblewrap"):
                pytest.skip(f"bubblewrap is not usable here: {info.isolation}")
            assert info.workdir == "/workspace"
            for hidden in (secret / "id_rsa", Path.home() / ".ssh" / "id_rsa", Path.home(), host.state_dir, project):
                probe = await client.exec(info.sandbox_id, argv=["cat", str(hidden)])
                assert probe.exit_code != 0, f"{hidden} is reachable in the sandbox"
                assert b"PRIVATE KEY" not in probe.stdout
            assert (await client.exec(info.sandbox_id, argv=["ls", "/root"])).exit_code != 0
            up = await client.exec(info.sandbox_id, shell="cat ../dot-ssh/id_rsa; ls ..")
            assert b"PRIVATE KEY" not in up.stdout and b"dot-ssh" not in up.stdout
            readonly = await client.exec(info.sandbox_id, argv=["touch", "/usr/tether-probe"])
            assert b"Read-only file system" in readonly.stderr
            with contextlib.suppress(Exception):
                await client.destroy(info.sandbox_id)
    assert (secret / "id_rsa").read_text() == "PRIVATE KEY\n"


def _tar(*members: tuple[str, str, bytes]) -> bytes:
    """A tar stream of ``(kind, name, data-or-target)`` members: ``file`` or ``symlink``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload.decode()
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


async def test_import_never_writes_outside_the_directory(direct_host: RunningHost, tmp_path: Path) -> None:
    project = _project(tmp_path / "allowed")
    neighbour = tmp_path / "allowed" / "neighbour"
    neighbour.mkdir()
    async with SandboxClient(direct_host.target, direct_host.token) as client:
        info = await client.provision(direct_host.recipe, workspace_dir=str(project))
        with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
            await client.import_tar(info.sandbox_id, _tar(("file", "../neighbour/x", b"x")))
        # A symlink member leading out, then a member through it: refused, nothing written outside.
        with pytest.raises(SandboxInvalidRequest, match="outside the workspace"):
            await client.import_tar(
                info.sandbox_id, _tar(("symlink", "out", str(neighbour).encode()), ("file", "out/x", b"x"))
            )
        # Through a symlink that stays inside, a member lands where the sandbox would put it.
        done = await client.import_tar(
            info.sandbox_id,
            _tar(("symlink", "inside", b"src"), ("file", "inside/new.py", b"n"), ("file", "src/main.py", b"m")),
        )
        assert done.files == 3
        assert (project / "src" / "new.py").read_bytes() == b"n"
        assert (project / "src" / "main.py").read_bytes() == b"m"
    assert list(neighbour.iterdir()) == []


async def test_embedded_host_allows_only_its_workspace_roots(tmp_path: Path) -> None:
    project = _project(tmp_path / "allowed")
    (tmp_path / "other").mkdir()
    async with EmbeddedHost(state_root=tmp_path / "states", workspace_roots=[tmp_path / "allowed"]) as host:
        async with SandboxClient(host.target, host.token) as client:
            await client.wait_ready()
            info = await client.provision(load_recipe(None), workspace_dir=str(project))
            await _sh_ok(client, info.sandbox_id, "echo embedded > f")
            assert (project / "f").read_text() == "embedded\n"
            with pytest.raises(SandboxPermissionDenied):
                await client.provision(load_recipe(None), workspace_dir=str(tmp_path / "other"))
    assert (project / "f").read_text() == "embedded\n"
    assert (project / "src" / "main.py").exists()


async def _sh_ok(client: SandboxClient, sandbox_id: str, command: str) -> None:
    result = await client.exec(sandbox_id, shell=command)
    assert result.exit_code == 0, result.stderr


async def test_a_direct_workspace_keeps_its_hash_cache_across_sandboxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files written just now are not trusted from the cache (the racy-timestamp rule); this
    # test is about the cache outliving the sandbox, so it trusts them.
    monkeypatch.setattr(manifest_module, "RACY_NS", 0)
    project = tmp_path / "project"
    project.mkdir()
    for index in range(20):
        (project / f"f{index}.txt").write_text(f"{index}\n" * 100)
    async with in_process_host("local", tmp_path / "host-state", allow_workspace_roots=[tmp_path]) as host:
        async with SandboxClient(host.target, host.token) as client:
            first = await client.provision(host.recipe, workspace_dir=str(project))
            await client.manifest_delta(first.sandbox_id)
            await client.destroy(first.sandbox_id)
            assert host.host is not None
            hashed: list[str] = []
            real = manifest_module._see_file

            def counting(dir_fd, name, rel, st, walk):  # the one place a file gets hashed
                hashed.append(rel)
                return real(dir_fd, name, rel, st, walk)

            monkeypatch.setattr(manifest_module, "_see_file", counting)
            second = await client.provision(host.recipe, workspace_dir=str(project))
            answer = await client.manifest_delta(second.sandbox_id)
            assert len(answer.entries) == 20
            assert hashed == [], f"a new sandbox of the same directory hashed {hashed} again"
