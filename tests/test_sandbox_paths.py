"""The path resolver under attack: ``..``, absolute paths, symlink loops and escapes, swaps mid-request, long and non-UTF-8 names.

Unit tests call ``SandboxPaths`` and ``Workspace`` on real directories. The
gRPC tests send the same paths to a real in-process host (local provider,
real gRPC over TCP) and check that ReadFile, WriteFile, Stat and ListDir refuse
each with INVALID_ARGUMENT and a message a user can read, and that nothing
outside the workspace is read or written. The race tests swap a directory or
file for a symlink to the outside thousands of times while the host resolves
and opens the path; a resolver that checks and then opens by path would read
the outside file here.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from agent.sandbox_client import SandboxClient
from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from protos.tether.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from remote_sandbox import paths as sandbox_paths
from remote_sandbox.atomic_write import exchange
from remote_sandbox.paths import MAX_SYMLINK_HOPS, SandboxPaths
from remote_sandbox.providers.base import InvalidRequest, SandboxRecord
from remote_sandbox.workspace import Workspace
from tests.fixtures.sandbox_host import RunningHost, host_workspace, in_process_host

WORKDIR = "/workspace"
"""Where the unit tests' sandbox sees its workspace."""

SECRET = b"OUTSIDE SECRET: must never be read through the workspace\n"
"""What the file outside the workspace holds."""

INSIDE = b"inside\n"
"""What the file inside the workspace holds."""

RACE_ROUNDS = 3000
"""Resolutions attempted while another thread swaps a name (unit level)."""

GRPC_RACE_ROUNDS = 1000
"""ReadFile calls while another thread swaps a name (over gRPC)."""

WAIT_S = 15.0
"""Bound on every gRPC call."""


@dataclass
class Layout:
    """A workspace on disk, a directory beside it that is outside, and the objects under test."""

    workspace: Path
    """The workspace's host directory (seen at ``WORKDIR``)."""
    outside: Path
    """A host directory outside the workspace, holding ``secret.txt``."""
    files: Workspace
    """The file operations on the workspace."""

    @property
    def paths(self) -> SandboxPaths:
        """The resolver."""
        return self.files.paths


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory outside every workspace, holding ``secret.txt``."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_bytes(SECRET)
    return directory


@pytest.fixture
def layout(tmp_path: Path, outside: Path) -> Layout:
    """An empty workspace and a secret outside it."""
    workspace = tmp_path / "sandbox" / "workspace"
    workspace.mkdir(parents=True)
    (tmp_path / "sandbox" / "spill").mkdir()
    record = SandboxRecord(
        sandbox_id="s", tenant="t", recipe=pb.Recipe(), workspace=workspace, workdir=WORKDIR, isolation="none"
    )
    return Layout(workspace, outside, Workspace(record))


def tree_of(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry below ``root`` (symlinks not followed): its type, and its content or link target."""
    tree: dict[str, tuple[int, bytes]] = {}
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                content = os.fsencode(os.readlink(path))
            elif stat.S_ISREG(mode):
                content = path.read_bytes()
            else:
                content = b""
            tree[str(path.relative_to(root))] = (stat.S_IFMT(mode), content)
    return tree


def read_all(files: Workspace, raw: str) -> bytes:
    """The whole content of ``raw`` through ``Workspace.open_reader``."""
    reader = files.open_reader(raw)
    try:
        return b"".join(reader.read(1 << 20))
    finally:
        reader.close()


def assert_refused(layout: Layout, raw: str, match: str) -> None:
    """The resolver, Stat, ListDir, ReadFile and WriteFile all refuse ``raw`` with a message matching ``match``."""
    for operation in (
        layout.paths.resolve,
        layout.files.stat,
        layout.files.list_dir,
        lambda path: read_all(layout.files, path),
        lambda path: layout.files.write_file(path, b"overwritten"),
    ):
        with pytest.raises(InvalidRequest, match=match):
            operation(raw)


def write(files: Workspace, raw: str) -> None:
    """Write ``INSIDE`` to ``raw`` through ``Workspace.write_file``."""
    files.write_file(raw, INSIDE)


# ----- `..` and absolute paths


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "../x",
        "a/../../x",
        "./../x",
        "a/./../..",
        "/workspace/..",
        "/workspace/../etc/passwd",
        "/workspace/a/../../x",
    ],
)
def test_dot_dot_out_of_the_workspace_is_refused_before_touching_the_disk(layout: Layout, raw: str) -> None:
    for create_parents in (False, True):
        with pytest.raises(InvalidRequest, match=r"outside the workspace \(/workspace\)"):
            layout.paths.resolve(raw, create_parents=create_parents)
    with pytest.raises(InvalidRequest, match="outside the workspace"):
        layout.files.write_file(raw, b"x")
    assert os.listdir(layout.workspace) == [], "no directory may be made on the way"


def test_dot_dot_that_stays_inside_is_followed(layout: Layout) -> None:
    (layout.workspace / "b").write_bytes(INSIDE)
    (layout.workspace / "a").mkdir()
    assert read_all(layout.files, "a/../b") == INSIDE
    assert read_all(layout.files, "/workspace/a/./../b") == INSIDE
    resolved = layout.paths.resolve("a/..")
    try:
        assert (resolved.relative, resolved.sandbox_path) == ("", "/workspace")
    finally:
        resolved.close()


@pytest.mark.parametrize("raw", ["/", "/etc/passwd", "/workspacex/a", "/work", "/tmp", "HOST_WORKSPACE/f", "OUTSIDE"])
def test_absolute_paths_outside_are_refused(layout: Layout, raw: str) -> None:
    # The host's own path of the workspace means nothing in the sandbox: it is outside too.
    raw = raw.replace("HOST_WORKSPACE", str(layout.workspace)).replace("OUTSIDE", str(layout.outside / "secret.txt"))
    (layout.workspace / "f").write_bytes(INSIDE)
    before = tree_of(layout.outside)
    assert_refused(layout, raw, "outside the workspace")
    assert tree_of(layout.outside) == before
    assert read_all(layout.files, "/workspace/f") == INSIDE


# ----- symlinks


def test_symlinks_leading_outside_are_refused_and_nothing_outside_changes(layout: Layout) -> None:
    ws = layout.workspace
    (ws / "d").mkdir()
    links = {
        "abs": "/etc/passwd",
        "host": str(layout.outside / "secret.txt"),
        "hostdir": str(layout.outside),
        "rel": "../../outside/secret.txt",
        "d/up": "../../..",
        "spill": "/tmp/tether-spill/x",  # another area of the sandbox, not the workspace
        "c1": "c2",
        "c2": "host",
        "mount-escape": "/workspace/../outside",
    }
    for name, target in links.items():
        os.symlink(target, ws / name)
    before = tree_of(layout.outside)
    for raw in [
        "abs",
        "host",
        "hostdir",
        "hostdir/secret.txt",
        "hostdir/new.txt",
        "rel",
        "d/up",
        "d/up/outside/secret.txt",
        "spill",
        "c1",
        "mount-escape",
    ]:
        assert_refused(layout, raw, "outside the workspace")
    with pytest.raises(InvalidRequest, match="symlink host points to"):
        layout.paths.resolve("c1")
    assert tree_of(layout.outside) == before
    assert sorted(os.listdir(ws)) == sorted({name.split("/")[0] for name in links}), "no temp file may stay"


def test_symlinks_that_stay_inside_are_followed(layout: Layout) -> None:
    ws = layout.workspace
    (ws / "real").mkdir()
    (ws / "real" / "f").write_bytes(INSIDE)
    os.symlink("real", ws / "rel")
    os.symlink("/workspace/real", ws / "abs")
    os.symlink("../real/f", ws / "real" / "up")
    for raw in ["rel/f", "abs/f", "real/up", "/workspace/abs/../real/f"]:
        assert read_all(layout.files, raw) == INSIDE, raw
    layout.files.write_file("abs/new", b"new")
    assert (ws / "real" / "new").read_bytes() == b"new"


@pytest.mark.parametrize(
    "links",
    [{"self": "self"}, {"a": "b", "b": "a"}, {"d": "d/x"}, {"up": "./up/../up"}],
    ids=["self", "pair", "through-itself", "dotted"],
)
def test_symlink_loops_are_refused(layout: Layout, links: dict[str, str]) -> None:
    for name, target in links.items():
        os.symlink(target, layout.workspace / name)
    assert_refused(layout, next(iter(links)), "too many levels of symbolic links")


@pytest.mark.parametrize("count", [MAX_SYMLINK_HOPS, MAX_SYMLINK_HOPS + 1])
def test_a_chain_of_symlinks_is_followed_as_far_as_the_kernel_follows_it(layout: Layout, count: int) -> None:
    (layout.workspace / "target").write_bytes(INSIDE)
    for index in range(count):
        os.symlink(f"l{index + 1}" if index + 1 < count else "target", layout.workspace / f"l{index}")
    try:
        with open(layout.workspace / "l0", "rb") as handle:
            kernel: bytes | None = handle.read()
    except OSError:
        kernel = None
    try:
        ours: bytes | None = read_all(layout.files, "l0")
    except InvalidRequest as exc:
        assert "too many levels of symbolic links" in str(exc)
        ours = None
    assert ours == kernel
    assert (ours is None) == (count > MAX_SYMLINK_HOPS)


# ----- long paths and names


@pytest.mark.parametrize(
    "name", ["a" * 255, "é" * 127 + "x", "\U0001f600" * 63 + "abc"], ids=["ascii", "two-byte", "four-byte"]
)
def test_a_name_of_name_max_bytes_is_written_and_read(layout: Layout, name: str) -> None:
    assert len(os.fsencode(name)) == sandbox_paths.NAME_MAX
    layout.files.write_file(name, INSIDE)
    layout.files.write_file(name, b"replaced")  # replacing makes a temp file beside it: its name must fit too
    assert read_all(layout.files, name) == b"replaced"
    assert os.listdir(layout.workspace) == [name]


def test_a_name_longer_than_name_max_is_refused_with_its_length(layout: Layout) -> None:
    for name in ["a" * 256, "é" * 128, "d/" + "b" * 300 + "/f"]:
        assert_refused(layout, name, "bytes long; a name may be at most 255 bytes")
    assert os.listdir(layout.workspace) == []


def test_a_path_of_path_max_bytes_is_refused_and_shown_shortened(layout: Layout) -> None:
    raw = "a/" * (sandbox_paths.PATH_MAX // 2)
    with pytest.raises(InvalidRequest, match=r"is 4096 bytes long; a path may be at most 4095 bytes") as refused:
        layout.files.write_file(raw, b"x")
    assert len(str(refused.value)) < 300
    assert os.listdir(layout.workspace) == []


def test_a_deep_path_within_the_limits_works(layout: Layout) -> None:
    raw = "d/" * 400 + "f"
    layout.files.write_file(raw, INSIDE)
    assert read_all(layout.files, raw) == INSIDE
    assert layout.files.stat(raw).path == f"{WORKDIR}/{raw}"


def test_symlinks_that_lead_deeper_than_a_path_can_name_are_refused(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each directory on the way holds a descriptor: symlinks must not multiply them past what a path can name."""
    monkeypatch.setattr(sandbox_paths, "MAX_DEPTH", 8)
    (layout.workspace / ("a/" * 12)).mkdir(parents=True)
    os.symlink("a/a/a/a/a", layout.workspace / "s1")
    os.symlink("a/a/a/a/a", layout.workspace / "a/a/a/a/a/s2")
    (layout.workspace / "a/a/a/a/a/a/a/a/f").write_bytes(INSIDE)
    assert read_all(layout.files, "s1/a/a/a/f") == INSIDE  # 8 directories deep: allowed
    with pytest.raises(InvalidRequest, match="leads more than 8 directories deep"):
        layout.files.stat("s1/s2/f")


# ----- names that are not UTF-8


def test_names_that_are_not_utf8_are_listed_readably_and_resolved(layout: Layout) -> None:
    raw_name = b"caf\xe9.txt"
    with open(os.path.join(os.fsencode(layout.workspace), raw_name), "wb") as handle:
        handle.write(INSIDE)
    entries = layout.files.list_dir("")
    assert [entry.path for entry in entries] == ["/workspace/caf\ufffd.txt"]
    for entry in entries:
        entry.SerializeToString()  # a surrogate would fail here, in the server's answer
    assert read_all(layout.files, os.fsdecode(raw_name)) == INSIDE
    # The shown name is another name: it does not lead to the file.
    assert not layout.files.stat("caf\ufffd.txt").exists


def test_symlinks_to_names_that_are_not_utf8_give_readable_answers(layout: Layout) -> None:
    ws = os.fsencode(layout.workspace)
    os.symlink(b"/etc/\xff", os.path.join(ws, b"out"))
    os.symlink(b"../\xff/x", os.path.join(ws, b"up"))
    os.symlink(b"missing-\xff", os.path.join(ws, b"dangling"))
    for raw in ["out", "up"]:
        with pytest.raises(InvalidRequest, match="outside the workspace") as refused:
            layout.files.stat(raw)
        str(refused.value).encode("utf-8")  # no surrogates: the message goes into a gRPC status
    info = layout.files.stat("dangling")
    assert not info.exists and info.path == "/workspace/missing-\ufffd"
    info.SerializeToString()


def test_a_nul_byte_is_refused(layout: Layout) -> None:
    with pytest.raises(InvalidRequest, match="NUL byte"):
        layout.files.stat("a\0b")


# ----- names swapped between the check and the use


class Swapper:
    """A thread that swaps two names in a directory (``renameat2(RENAME_EXCHANGE)``) until stopped."""

    def __init__(self, directory: Path, first: str, second: str) -> None:
        """Swap ``first`` and ``second`` in ``directory``."""
        self.directory = directory
        self.names = (first, second)
        self.swaps = 0
        """Swaps done so far."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            while not self._stop.is_set():
                assert exchange(fd, *self.names), "renameat2(RENAME_EXCHANGE) is needed for this test"
                self.swaps += 1
        finally:
            os.close(fd)

    def __enter__(self) -> Swapper:
        """Start swapping."""
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stop swapping."""
        self._stop.set()
        self._thread.join(WAIT_S)


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Let threads switch far more often than every 5 ms, so the swaps land between the resolver's steps."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def race(attempt: Callable[[], bytes | None]) -> tuple[list[bytes | None], int]:
    """Run ``attempt`` ``RACE_ROUNDS`` times; return its results (None = refused) and how many were refused."""
    results: list[bytes | None] = []
    refused = 0
    for _ in range(RACE_ROUNDS):
        try:
            results.append(attempt())
        except InvalidRequest:
            refused += 1
    return results, refused


@pytest.mark.usefixtures("busy_switching")
def test_a_directory_swapped_for_a_symlink_never_leads_outside(layout: Layout) -> None:
    ws = layout.workspace
    (ws / "d").mkdir()
    (ws / "d" / "secret.txt").write_bytes(INSIDE)
    (layout.outside / "only-outside").write_bytes(SECRET)
    # The kernel follows this link wherever it appears: only opening with O_NOFOLLOW stops it.
    os.symlink(layout.outside, ws / ".swap")
    before = tree_of(layout.outside)
    with Swapper(ws, "d", ".swap") as swapper:
        reads, refused_reads = race(lambda: read_all(layout.files, "d/secret.txt"))
        listings, refused_lists = race(lambda: b" ".join(e.path.encode() for e in layout.files.list_dir("d")))
        writes, refused_writes = race(lambda: write(layout.files, "d/new.txt"))
    assert SECRET not in reads
    assert all(b"only-outside" not in (listing or b"") for listing in listings)
    assert tree_of(layout.outside) == before, "nothing may be written outside"
    # The race was run: both states of the name were met.
    assert swapper.swaps > 100 and INSIDE in reads and refused_reads > 0, (swapper.swaps, refused_reads)
    assert refused_lists > 0 and refused_writes > 0 and len(writes) > 0


@pytest.mark.usefixtures("busy_switching")
def test_a_file_swapped_for_a_symlink_is_never_read_or_written_through(layout: Layout) -> None:
    ws = layout.workspace
    (ws / "f.txt").write_bytes(INSIDE)
    os.symlink(layout.outside / "secret.txt", ws / ".swap")
    with Swapper(ws, "f.txt", ".swap") as swapper:
        reads, refused = race(lambda: read_all(layout.files, "f.txt"))
        sizes, _ = race(lambda: str(layout.files.stat("f.txt").size).encode())
        race(lambda: write(layout.files, "f.txt"))
    assert SECRET not in reads
    assert str(len(SECRET)).encode() not in sizes, "Stat must not describe the file outside"
    assert (layout.outside / "secret.txt").read_bytes() == SECRET
    assert swapper.swaps > 100 and INSIDE in reads and refused > 0, (swapper.swaps, refused)


# ----- through the real gRPC host


@pytest.fixture
async def local_host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    """An in-process local host."""
    async with in_process_host("local", tmp_path / "host-state") as host:
        yield host


@dataclass
class HostSandbox:
    """A sandbox of the test host and what the tests need to call it."""

    sandbox: pb.SandboxInfo
    """The sandbox."""
    stub: pb_grpc.SandboxStub
    """A stub of the host on an open channel."""
    metadata: tuple[tuple[str, str], ...]
    """The bearer token."""
    workspace: Path
    """The sandbox's workspace on the host."""


@pytest.fixture
async def host_sandbox(local_host: RunningHost) -> AsyncIterator[HostSandbox]:
    """A sandbox of a real host, and a raw stub to send it any request."""
    async with SandboxClient(local_host.target, local_host.token) as client:
        sandbox = await client.provision(local_host.recipe)
    async with grpc.aio.insecure_channel(local_host.target.removeprefix("grpc://")) as channel:
        yield HostSandbox(
            sandbox,
            pb_grpc.SandboxStub(channel),
            (("authorization", f"Bearer {local_host.token}"),),
            host_workspace(local_host, sandbox.sandbox_id),
        )


async def call_each_file_rpc(host: HostSandbox, path: str) -> dict[str, grpc.aio.AioRpcError | None]:
    """ReadFile, WriteFile, Stat and ListDir of ``path``: the error each ended with (None = none)."""
    sandbox_id, meta = host.sandbox.sandbox_id, host.metadata
    header = pb.WriteFileHeader(sandbox_id=sandbox_id, path=path, create_parents=True, size=11)
    calls = {
        "ReadFile": lambda: _drain(
            host.stub.ReadFile(pb.ReadFileRequest(sandbox_id=sandbox_id, path=path), metadata=meta, timeout=WAIT_S)
        ),
        "WriteFile": lambda: host.stub.WriteFile(
            iter([pb.WriteFileRequest(header=header), pb.WriteFileRequest(data=b"overwritten")]),
            metadata=meta,
            timeout=WAIT_S,
        ),
        "Stat": lambda: host.stub.Stat(pb.PathRequest(sandbox_id=sandbox_id, path=path), metadata=meta, timeout=WAIT_S),
        "ListDir": lambda: host.stub.ListDir(
            pb.PathRequest(sandbox_id=sandbox_id, path=path), metadata=meta, timeout=WAIT_S
        ),
    }
    errors: dict[str, grpc.aio.AioRpcError | None] = {}
    for name, call in calls.items():
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            errors[name] = exc
        else:
            errors[name] = None
    return errors


async def _drain(call: grpc.aio.UnaryStreamCall) -> list[bytes]:
    """Every chunk of a ReadFile call."""
    return [chunk.data async for chunk in call]


async def test_hostile_paths_over_grpc_are_invalid_arguments_with_readable_messages(
    host_sandbox: HostSandbox, outside: Path
) -> None:
    ws = os.fsencode(host_sandbox.workspace)
    for name, target in {
        b"abs-link": b"/etc/passwd",
        b"host-link": os.fsencode(outside / "secret.txt"),
        b"dir-link": os.fsencode(outside),
        b"rel-link": b"../../../../outside/secret.txt",
        b"loop": b"loop",
        b"bad-target": b"/\xff/x",
    }.items():
        os.symlink(target, os.path.join(ws, name))
    workdir = host_sandbox.sandbox.workdir
    cases = {
        "../x": "outside the workspace",
        "a/../../x": "outside the workspace",
        "/etc/passwd": "outside the workspace",
        f"{workdir}/../etc/passwd": "outside the workspace",
        f"{workdir}x/y": "outside the workspace",
        str(host_sandbox.workspace / "abs-link"): "outside the workspace",
        "abs-link": "outside the workspace",
        "host-link": "outside the workspace",
        "dir-link": "outside the workspace",
        "dir-link/secret.txt": "outside the workspace",
        "rel-link": "outside the workspace",
        "bad-target": "outside the workspace",
        "loop": "too many levels of symbolic links",
        "n" * 256: "a name may be at most 255 bytes",
        "a/" * 2048: "a path may be at most 4095 bytes",
        "with\0nul": "NUL byte",
    }
    before, listing = tree_of(outside), sorted(os.listdir(host_sandbox.workspace))
    for path, expected in cases.items():
        for rpc, error in (await call_each_file_rpc(host_sandbox, path)).items():
            assert error is not None, f"{rpc} of {path[:60]!r} succeeded"
            details = error.details() or ""
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, path[:60], error.code(), details)
            assert expected in details, (rpc, path[:60], details)
            assert "Traceback" not in details and "internal error" not in details and len(details) < 400
    assert tree_of(outside) == before, "nothing outside the workspace may be written"
    assert sorted(os.listdir(host_sandbox.workspace)) == listing, "nothing may be made in the workspace"


async def test_long_and_non_utf8_names_over_grpc(host_sandbox: HostSandbox) -> None:
    sandbox_id, meta = host_sandbox.sandbox.sandbox_id, host_sandbox.metadata
    longest = "é" * 127 + "x"  # NAME_MAX bytes: its temp file's name must fit as well
    for _ in range(2):
        header = pb.WriteFileHeader(sandbox_id=sandbox_id, path=longest, size=len(INSIDE))
        await host_sandbox.stub.WriteFile(
            iter([pb.WriteFileRequest(header=header), pb.WriteFileRequest(data=INSIDE)]), metadata=meta, timeout=WAIT_S
        )
    ws = os.fsencode(host_sandbox.workspace)
    with open(os.path.join(ws, b"caf\xe9"), "wb") as handle:
        handle.write(INSIDE)
    os.symlink(b"missing-\xff", os.path.join(ws, b"dangling"))
    listing = await host_sandbox.stub.ListDir(
        pb.PathRequest(sandbox_id=sandbox_id, path=""), metadata=meta, timeout=WAIT_S
    )
    workdir = host_sandbox.sandbox.workdir
    assert sorted(entry.path for entry in listing.entries) == [
        f"{workdir}/{name}" for name in sorted(["caf\ufffd", "dangling", longest])
    ]
    dangling = await host_sandbox.stub.Stat(
        pb.PathRequest(sandbox_id=sandbox_id, path="dangling"), metadata=meta, timeout=WAIT_S
    )
    assert not dangling.exists and dangling.path == f"{workdir}/missing-\ufffd"


@pytest.mark.usefixtures("busy_switching")
async def test_a_directory_swapped_for_a_symlink_during_grpc_reads_never_leads_outside(
    host_sandbox: HostSandbox, outside: Path
) -> None:
    (host_sandbox.workspace / "d").mkdir()
    (host_sandbox.workspace / "d" / "secret.txt").write_bytes(INSIDE)
    os.symlink(outside, host_sandbox.workspace / ".swap")
    request = pb.ReadFileRequest(sandbox_id=host_sandbox.sandbox.sandbox_id, path="d/secret.txt")
    read, refused = [], 0
    with Swapper(host_sandbox.workspace, "d", ".swap") as swapper:
        for _ in range(GRPC_RACE_ROUNDS):
            try:
                read.append(
                    b"".join(
                        await _drain(
                            host_sandbox.stub.ReadFile(request, metadata=host_sandbox.metadata, timeout=WAIT_S)
                        )
                    )
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
                refused += 1
    assert SECRET not in read
    assert swapper.swaps > 0 and INSIDE in read and refused > 0, (swapper.swaps, refused)
