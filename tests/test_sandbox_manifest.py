"""Manifest deltas, ignore rules and skipped files, over real gRPC against a real host."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.sandbox_client import SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox import manifest as mf
from remote_sandbox.workspace import sandbox_root
from tests.fixtures.sandbox_host import RunningHost


@pytest.fixture
async def client(sandbox_host: RunningHost) -> AsyncIterator[SandboxClient]:
    """A client of the host (once per provider)."""
    async with SandboxClient(sandbox_host.target, sandbox_host.token) as client:
        yield client


async def _sh(client: SandboxClient, sandbox_id: str, command: str) -> None:
    result = await client.exec(sandbox_id, shell=command)
    assert result.exit_code == 0, result.stderr


def _by_path(response: pb.ManifestResponse) -> dict[str, pb.ManifestEntry]:
    return {entry.path: entry for entry in response.entries}


def _host_workspace(host: RunningHost, sandbox_id: str) -> Path:
    return sandbox_root(host.state_dir.resolve(), sandbox_id) / "workspace"


async def test_delta_follows_every_kind_of_change(client: SandboxClient, sandbox_host: RunningHost) -> None:
    sandbox = (await client.provision(sandbox_host.recipe)).sandbox_id
    await _sh(client, sandbox, "mkdir -p src && printf aaaa > src/same && printf old > gone && printf r > before")
    full = await client.manifest_delta(sandbox)
    assert not full.delta and full.token
    assert set(_by_path(full)) == {"src/same", "gone", "before"}
    assert _by_path(full)["src/same"].sha256 == hashlib.sha256(b"aaaa").hexdigest()

    unchanged = await client.manifest_delta(sandbox, since=full.token)
    assert unchanged.delta and list(unchanged.entries) == [] and list(unchanged.removed) == []
    assert unchanged.token != full.token

    # Same size, same inode, within the same second as the answer before: must still be seen.
    await _sh(client, sandbox, "printf bbbb > src/same && printf new > added")
    step = await client.manifest_delta(sandbox, since=unchanged.token)
    assert step.delta
    assert {p: e.sha256 for p, e in _by_path(step).items()} == {
        "src/same": hashlib.sha256(b"bbbb").hexdigest(),
        "added": hashlib.sha256(b"new").hexdigest(),
    }

    await _sh(client, sandbox, "chmod 755 added && rm gone && ln -s src/same link && mv before after")
    step2 = await client.manifest_delta(sandbox, since=step.token)
    changed = _by_path(step2)
    assert set(changed) == {"added", "link", "after"}
    assert stat.S_IMODE(changed["added"].mode) == 0o755
    assert stat.S_ISLNK(changed["link"].mode)
    assert changed["link"].sha256 == hashlib.sha256(b"src/same").hexdigest()
    assert sorted(e.path for e in step2.removed) == ["before", "gone"]

    # An earlier token still answers against its own state.
    again = await client.manifest_delta(sandbox, since=step.token)
    assert again.delta and set(_by_path(again)) == {"added", "link", "after"}


async def test_a_token_of_other_rules_or_unknown_gets_a_full_answer(
    client: SandboxClient, sandbox_host: RunningHost
) -> None:
    sandbox = (await client.provision(sandbox_host.recipe)).sandbox_id
    await _sh(client, sandbox, "mkdir -p a b && echo 1 > a/x && echo 2 > b/y")
    only_a = await client.manifest_delta(sandbox, exclude=["b/"])
    assert set(_by_path(only_a)) == {"a/x"}
    everything = await client.manifest_delta(sandbox, since=only_a.token)
    # A delta against the rules without b/ would wrongly call b/y new, or miss it: a full answer instead.
    assert not everything.delta and set(_by_path(everything)) == {"a/x", "b/y"}
    limited = await client.manifest_delta(sandbox, since=everything.token, max_file_bytes=1)
    assert not limited.delta
    unknown = await client.manifest_delta(sandbox, since="no-such-token")
    assert not unknown.delta and set(_by_path(unknown)) == {"a/x", "b/y"}
    sub = await client.manifest_delta(sandbox, paths=["a"])
    assert not sub.delta and set(_by_path(sub)) == {"a/x"}
    assert (await client.manifest_delta(sandbox, paths=["a"], since=sub.token)).delta


async def test_exclude_and_nested_gitignore_prune_the_walk(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = (await client.provision(local_sandbox_host.recipe)).sandbox_id
        await _sh(
            client,
            sandbox,
            "mkdir -p node_modules/pkg sub/deeper .git build && echo x > node_modules/pkg/i.js"
            " && mkfifo node_modules/pkg/pipe && mkfifo build/pipe"
            " && printf '*.log\\n/only_here\\n!keep.log\\n' > sub/.gitignore && printf 'build/\\n' > .gitignore"
            " && echo 1 > a.log && echo 2 > sub/a.log && echo 3 > sub/only_here && echo 4 > sub/deeper/only_here"
            " && echo 5 > sub/deeper/b.log && echo 6 > sub/keep.log && echo 7 > .git/HEAD",
        )
        answer = await client.manifest_delta(sandbox, exclude=["node_modules/"], gitignore=True)
        assert set(_by_path(answer)) == {
            ".gitignore", "a.log", "sub/.gitignore", "sub/deeper/only_here", "sub/keep.log", ".git/HEAD",
        }  # fmt: skip
        # The FIFOs sit in pruned directories: a walk that entered them would list them as skipped.
        assert list(answer.skipped) == []
        without_git = await client.manifest_delta(sandbox, exclude=["node_modules/", ".git/"], gitignore=True)
        assert ".git/HEAD" not in _by_path(without_git)
        plain = await client.manifest_delta(sandbox)
        assert {"sub/a.log", "node_modules/pkg/i.js"} <= set(_by_path(plain))
        assert {(s.path, s.reason) for s in plain.skipped} == {
            ("node_modules/pkg/pipe", "fifo"),
            ("build/pipe", "fifo"),
        }
        # A sub-path walk still honours the .gitignore files above it.
        below = await client.manifest_delta(sandbox, paths=["sub/deeper"], gitignore=True)
        assert set(_by_path(below)) == {"sub/deeper/only_here"}


async def test_special_and_large_files_are_skipped(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = (await client.provision(local_sandbox_host.recipe)).sandbox_id
        await client.write_file(sandbox, "big", b"x" * 2000)
        await client.write_file(sandbox, "small", b"x" * 10)
        workspace = _host_workspace(local_sandbox_host, sandbox)
        os.mkfifo(workspace / "pipe")
        here = os.getcwd()
        os.chdir(workspace)  # a socket's path is limited to 108 bytes; a relative one fits
        listener = socket.socket(socket.AF_UNIX)
        try:
            listener.bind("sock")
        finally:
            os.chdir(here)
        expected = {("big", "too large"), ("pipe", "fifo"), ("sock", "socket")}
        if os.geteuid() == 0:
            os.mknod(workspace / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            expected.add(("null", "device"))
        try:
            answer = await client.manifest_delta(sandbox, max_file_bytes=1000)
        finally:
            listener.close()
        assert set(_by_path(answer)) == {"small"}
        assert {(s.path, s.reason) for s in answer.skipped} == expected


async def test_unreadable_files_are_skipped(local_sandbox_host: RunningHost) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = (await client.provision(local_sandbox_host.recipe)).sandbox_id
        await client.write_file(sandbox, "secret", b"s", mode=0o000)
        answer = await client.manifest_delta(sandbox)
        assert [(s.path, s.reason) for s in answer.skipped] == [("secret", "unreadable")]


async def test_non_utf8_names_round_trip(client: SandboxClient, sandbox_host: RunningHost) -> None:
    sandbox = (await client.provision(sandbox_host.recipe)).sandbox_id
    await _sh(client, sandbox, "mkdir d && printf data > \"$(printf 'd/caf\\351.txt')\"")
    answer = await client.manifest_delta(sandbox)
    (entry,) = answer.entries
    assert entry.raw_path == b"d/caf\xe9.txt"
    assert entry.path == "d/caf\ufffd.txt"
    tar_bytes = b"".join([chunk async for chunk in client.export(sandbox, raw_paths=[entry.raw_path])])
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), encoding="utf-8", errors="surrogateescape") as tar:
        assert [os.fsencode(m.name) for m in tar.getmembers()] == [b"d/caf\xe9.txt"]
    fresh = (await client.provision(sandbox_host.recipe)).sandbox_id
    await client.import_tar(fresh, tar_bytes)
    (copied,) = (await client.manifest_delta(fresh)).entries
    assert (copied.raw_path, copied.sha256) == (entry.raw_path, entry.sha256)
    listed = await client.exec(fresh, shell="printf '%s' d/* | od -c | head -1")
    assert b"351" in listed.stdout
    await _sh(client, sandbox, "rm \"$(printf 'd/caf\\351.txt')\"")
    gone = await client.manifest_delta(sandbox, since=answer.token)
    assert [(e.path, e.raw_path) for e in gone.removed] == [("d/caf\ufffd.txt", b"d/caf\xe9.txt")]


def test_a_file_changed_just_before_a_walk_is_hashed_again(tmp_path: Path) -> None:
    # Content changed under an identical stat (same inode, size and timestamps: one coarse
    # timestamp tick) is simulated by poisoning the cached digest: only a re-hash corrects it.
    (tmp_path / "fresh").write_bytes(b"one")
    (tmp_path / "old").write_bytes(b"two")
    os.utime(tmp_path / "old", ns=(1_000_000_000, 1_000_000_000))  # mtime long ago; its ctime is now, though
    state = mf.ManifestState()
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = mf.manifest(root, pb.ManifestRequest(), state)
        assert not any(seen[3] for seen in state.cache.values()), "a file changed within a second was trusted"
        for rel, seen in state.cache.items():
            state.cache[rel] = (seen[0], seen[1], "poisoned", seen[3])
        second = mf.manifest(root, pb.ManifestRequest(since=first.token), state)
        assert second.delta and list(second.entries) == []
        assert {rel: seen[2] for rel, seen in state.cache.items()} == {
            "fresh": hashlib.sha256(b"one").hexdigest(),
            "old": hashlib.sha256(b"two").hexdigest(),
        }
        # Once trusted, the cache answers without reading: the poisoned digest shows through.
        for rel, seen in state.cache.items():
            state.cache[rel] = (seen[0], seen[1], "poisoned", True)
        third = mf.manifest(root, pb.ManifestRequest(since=second.token), state)
        assert {e.sha256 for e in third.entries} == {"poisoned"}
    finally:
        os.close(root)


async def test_gitignore_patterns_never_reach_into_the_repository(local_sandbox_host: RunningHost) -> None:
    async with SandboxClient(local_sandbox_host.target, local_sandbox_host.token) as client:
        sandbox = (await client.provision(local_sandbox_host.recipe)).sandbox_id
        await _sh(
            client,
            sandbox,
            "mkdir -p .git/logs .git/objects/pack logs && echo h > .git/logs/HEAD && echo p > .git/objects/pack/x.pack"
            " && echo l > logs/app.txt && printf 'logs/\\n*.pack\\n' > .gitignore",
        )
        answer = await client.manifest_delta(sandbox, gitignore=True)
        assert set(_by_path(answer)) == {".gitignore", ".git/logs/HEAD", ".git/objects/pack/x.pack"}
