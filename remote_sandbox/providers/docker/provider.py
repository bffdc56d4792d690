"""The docker provider's lifecycle: provision, destroy, reconcile and adopt containers; exec through the shared loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.execution.loop import Cleanups, run_command
from remote_sandbox.execution.request import validate
from remote_sandbox.execution.setup import run_captured, run_setup
from remote_sandbox.providers.base import ExecSpec, InvalidRequest, Provider, SandboxNotFound, SandboxRecord
from remote_sandbox.providers.docker.command import DockerCommand
from remote_sandbox.providers.docker.container import (
    LABEL_HOST,
    LABEL_SANDBOX,
    DockerError,
    Engine,
    overlaps,
    record_from_labels,
)
from remote_sandbox.providers.docker.exec_server import (
    CONTROL_DIR_NAME,
    CONTROL_MOUNT,
    SCRIPTS,
    ContainerExec,
    prepare_control_dir,
)

log = logging.getLogger("remote_sandbox.docker")

DEFAULT_WORKDIR = "/workspace"
"""The workspace path in the container when neither the record nor the recipe names one."""


class DockerProvider(Provider):
    """Sandboxes as docker containers, with a resident exec server for fast commands."""

    name = "docker"

    def __init__(self, default_image: str = "", host_id: str = "", client: docker.DockerClient | None = None) -> None:
        """Use ``client`` (or one from the environment, which ``close`` then closes)."""
        self.default_image = default_image
        """The image for recipes that name none; empty means such recipes are refused."""
        self.host_id = host_id
        """This host's id, written on every container so a later run can reconcile."""
        self._owns_client = client is None
        if client is None:
            try:
                client = docker.from_env()
            except docker.errors.DockerException as error:
                raise DockerError(f"cannot reach the docker engine (is dockerd running?): {error}") from None
        self.client = client
        """The docker SDK client."""
        self.engine = Engine(client)
        """Blocking calls to the engine."""
        self._cleanups = Cleanups()

    @property
    def _docker_init(self) -> bool | None:
        """Whether the engine has docker-init (None: not asked yet); tests set it False."""
        return self.engine.docker_init

    @_docker_init.setter
    def _docker_init(self, value: bool | None) -> None:
        self.engine.docker_init = value

    # ----- lifecycle

    async def provision(self, record: SandboxRecord) -> None:
        """Create and start the container, start its exec server, run the recipe's setup."""
        recipe = record.recipe
        image = recipe.image or self.default_image
        if not image:
            raise InvalidRequest(
                "the recipe names no image and this docker host has no default image: "
                'set `image = "IMAGE"` in the recipe (a TOML file given to --recipe), '
                "or start the host with `tether sandbox serve --provider docker --default-image IMAGE`"
            )
        workdir = record.workdir or recipe.workdir or DEFAULT_WORKDIR
        if not workdir.startswith("/"):
            raise InvalidRequest(f"workdir {workdir!r} must be an absolute path")
        if overlaps(workdir, CONTROL_MOUNT):
            raise InvalidRequest(f"workdir {workdir!r} overlaps {CONTROL_MOUNT}, where the exec server lives")
        record.workdir = workdir
        spill_dir = record.state_root / "spill"
        control_dir = record.state_root / CONTROL_DIR_NAME
        spill_dir.mkdir(parents=True, exist_ok=True)
        prepare_control_dir(control_dir)
        container_id = await asyncio.to_thread(self.engine.create, record, image, self.host_id, spill_dir, control_dir)
        container = self._handle(container_id, record)
        try:
            await container.start_server()
            record.handle = container
            record.isolation = "docker"
            if not self.engine.docker_init:
                record.warnings.append("docker-init is missing: a shell runs as pid 1 and reaps zombies")
            if not container.has_setsid:
                record.warnings.append(
                    f"image {image} has no setsid: commands share a process group with the exec server"
                )
            uname = await run_captured(self.exec, record, "uname -srm")
            record.os = uname.stdout.decode(errors="replace").strip()
            await run_setup(self.exec, record)
        except BaseException:
            record.handle = None
            await asyncio.to_thread(self.engine.remove, container_id)
            container.close_workers()
            shutil.rmtree(control_dir, ignore_errors=True)
            raise

    def _handle(self, container_id: str, record: SandboxRecord) -> ContainerExec:
        """The provider's handle of the sandbox's container."""
        return ContainerExec(
            container_id,
            record.state_root / "spill",
            record.spill_mount,
            record.state_root / CONTROL_DIR_NAME,
            self.client.api,
            self.engine.state,
        )

    async def destroy(self, record: SandboxRecord) -> None:
        """Remove the container with everything running in it. Idempotent."""
        container = record.handle
        if isinstance(container, ContainerExec):
            await asyncio.to_thread(self.engine.remove, container.container_id)
            container.close_workers()
            shutil.rmtree(container.control_dir, ignore_errors=True)
        # A provision interrupted half-way may have left a container without a handle.
        for found in await asyncio.to_thread(self.engine.labelled, LABEL_SANDBOX, record.sandbox_id):
            await asyncio.to_thread(self.engine.remove, found.container_id)
        record.handle = None

    async def is_running(self, record: SandboxRecord) -> bool:
        """Whether the container exists and is running."""
        container = record.handle
        if not isinstance(container, ContainerExec):
            return False
        return await asyncio.to_thread(self.engine.state, container.container_id) == "running"

    async def adopt(self, host_id: str, state_dir: Path) -> list[SandboxRecord]:
        """Records of the running containers an earlier run of this host left, whose labels and files are intact.

        Their exec servers' old workers are told to quit (the host that knew them is
        gone); the exec server itself is reused while it runs, restarted when not.
        """
        adopted = []
        for found in await asyncio.to_thread(self.engine.labelled, LABEL_HOST, host_id):
            record = record_from_labels(found.labels, state_dir) if found.running else None
            if record is None:
                continue
            container = self._handle(found.container_id, record)
            if not container.control_dir.is_dir():
                continue
            container.spawned = await asyncio.to_thread(_retire_old_workers, container.control_dir)
            record.handle = container
            record.last_used_unix_ms = record.created_unix_ms
            adopted.append(record)
        return adopted

    async def reconcile(self, host_id: str, keep: frozenset[str] = frozenset()) -> list[str]:
        """Remove containers labelled ``tether.host=<host_id>`` left by an earlier run, but those of sandboxes in ``keep``.

        Returns the removed containers' ids.
        """
        removed = []
        for found in await asyncio.to_thread(self.engine.labelled, LABEL_HOST, host_id):
            if found.labels.get(LABEL_SANDBOX) not in keep:
                await asyncio.to_thread(self.engine.remove, found.container_id)
                removed.append(found.container_id)
        return removed

    async def close(self) -> None:
        """Finish pending kills and close the docker client if this provider opened it."""
        await self._cleanups.wait()
        if self._owns_client:
            self.client.close()

    # ----- commands

    def exec(self, record: SandboxRecord, spec: ExecSpec) -> AsyncIterator[pb.ExecEvent]:
        """Run ``spec`` in its own process group; yield Started, Output..., Exited."""
        container = record.handle
        if not isinstance(container, ContainerExec):
            raise SandboxNotFound(f"sandbox {record.sandbox_id} has no container")
        validate(spec)
        if not spec.cwd:
            spec = dataclasses.replace(spec, cwd=record.workdir)
        command = DockerCommand(container, spec)
        spill_file = container.spill_dir / f"exec-{command.run_id}.log"
        return run_command(command, spec, spill_file, container.spill_mount, self._cleanups)


def _retire_old_workers(control_dir: Path) -> int:
    """Tell the workers of an earlier host to quit, remove their files, and refresh the scripts; the highest worker number."""
    highest = 0
    for path in control_dir.iterdir():
        stem, _, suffix = path.name.partition(".")
        if not (stem.startswith("w") and stem[1:].isdigit()):
            continue
        highest = max(highest, int(stem[1:]))
        if suffix == "req":
            # An idle runner reads this and ends; its worker then finds its files gone and stops.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                pass
            else:
                try:
                    os.write(fd, b"quit\n")
                except OSError:
                    pass
                finally:
                    os.close(fd)
        path.unlink(missing_ok=True)
    scripts = resources.files("remote_sandbox.providers.docker").joinpath("scripts")
    for name in SCRIPTS:
        if name != "server.sh":
            (control_dir / name).write_text(scripts.joinpath(name).read_text())
    return highest
