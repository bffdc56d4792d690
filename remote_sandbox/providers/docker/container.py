"""The docker engine side of a sandbox's lifecycle: its container, labels and limits (blocking calls).

Every container carries labels enough to rebuild the host's record of its sandbox
(``tether.record``), so a host restarted on the same state dir adopts the
containers an earlier run of it left running.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.providers.base import InvalidRequest, ProviderError, SandboxNotRunning, SandboxRecord
from remote_sandbox.providers.docker.exec_server import CONTROL_MOUNT

DEFAULT_PIDS_LIMIT = 1024
"""Pids limit when the recipe sets none: an unlimited container lets a fork bomb reach the host."""

KEEP_ALIVE_COMMAND = ["sleep", "2147483647"]
"""The container's main process under docker-init: does nothing, for 68 years."""

REAPER_INIT_COMMAND = [
    "/bin/sh",
    "-c",
    # Used only when the engine has no docker-init. A shell as pid 1 ignores signals it
    # has no trap for, so TERM is trapped; `wait` calls waitpid(-1), which also reaps
    # orphans reparented to pid 1.
    "trap 'exit 0' TERM; while :; do sleep 2147483647 & wait $!; done",
]
"""The container's main process when docker-init is missing: a keep-alive that reaps zombies."""

LABEL_SANDBOX = "tether.sandbox"
LABEL_HOST = "tether.host"
LABEL_TENANT = "tether.tenant"
LABEL_TTL = "tether.ttl"
LABEL_RECORD = "tether.record"
"""JSON of what else the host's record holds: recipe, workspace, workdir, state dir, times."""

_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")


class DockerError(ProviderError):
    """The docker engine refused or failed a request; the message carries its words."""


def overlaps(first: str, second: str) -> bool:
    """Whether one absolute path is the other or lies under it."""
    first, second = os.path.normpath(first).rstrip("/") + "/", os.path.normpath(second).rstrip("/") + "/"
    return first.startswith(second) or second.startswith(first)


def labels(record: SandboxRecord, host_id: str) -> dict[str, str]:
    """The container's labels: the recipe's own, then who owns it and how to rebuild its record."""
    recipe = record.recipe
    saved = {
        "recipe": base64.b64encode(recipe.SerializeToString()).decode(),
        "workspace": str(record.workspace),
        "workdir": record.workdir,
        "state": str(record.state_root),
        "workspace_dir": record.workspace_dir,
        "spill_mount": record.spill_mount,
        "created_unix_ms": record.created_unix_ms,
    }
    return {
        **dict(recipe.labels),
        LABEL_SANDBOX: record.sandbox_id,
        LABEL_HOST: host_id,
        LABEL_TENANT: record.tenant,
        LABEL_TTL: str(recipe.idle_ttl_seconds),
        LABEL_RECORD: json.dumps(saved, sort_keys=True),
    }


def record_from_labels(found: dict[str, str], state_dir: Path) -> SandboxRecord | None:
    """The record a container's labels describe, or None if they are unreadable or point outside ``state_dir``."""
    try:
        saved = json.loads(found[LABEL_RECORD])
        recipe = pb.Recipe.FromString(base64.b64decode(saved["recipe"]))
        state = Path(saved["state"]).resolve()
        workspace = Path(saved["workspace"])
        record = SandboxRecord(
            sandbox_id=found[LABEL_SANDBOX],
            tenant=found[LABEL_TENANT],
            recipe=recipe,
            workspace=workspace,
            workdir=str(saved["workdir"]),
            isolation="docker",
            created_unix_ms=int(saved["created_unix_ms"]),
            spill_mount=str(saved["spill_mount"]),
            state=state,
            workspace_dir=str(saved["workspace_dir"]),
        )
    except (KeyError, ValueError, TypeError):
        return None
    # Labels are only as trustworthy as whoever can run containers: never adopt a path outside our state.
    if state_dir.resolve() not in state.parents or not state.is_dir() or not workspace.is_dir():
        return None
    return record


@dataclass
class Found:
    """A container labelled with this host's id."""

    container_id: str
    """Its id."""
    running: bool
    """Whether it is running."""
    labels: dict[str, str]
    """All its labels."""


class Engine:
    """The docker engine, as the provider uses it: blocking calls, run in a thread."""

    def __init__(self, client: docker.DockerClient) -> None:
        """Use ``client``."""
        self.client = client
        """The docker SDK client."""
        self.docker_init: bool | None = None
        """Whether the engine has docker-init (None: not asked yet)."""

    def create(self, record: SandboxRecord, image: str, host_id: str, spill_dir: Path, control_dir: Path) -> str:
        """Create and start the sandbox's container; returns its id."""
        recipe = record.recipe
        options: dict[str, object] = {
            "labels": labels(record, host_id),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": recipe.limits.pids or DEFAULT_PIDS_LIMIT,
            "network_mode": "bridge" if recipe.network else "none",
            "volumes": {
                str(record.workspace): {"bind": record.workdir, "mode": "rw"},
                str(spill_dir): {"bind": record.spill_mount, "mode": "rw"},
                str(control_dir): {"bind": CONTROL_MOUNT, "mode": "rw"},
            },
            # The host's ids, so files written in the bind mounts belong to the host user.
            "user": f"{os.getuid()}:{os.getgid()}",
            "working_dir": record.workdir,
            "environment": dict(recipe.env),
            "detach": True,
        }
        if recipe.limits.memory_bytes:
            options["mem_limit"] = recipe.limits.memory_bytes
        if recipe.limits.cpus:
            options["nano_cpus"] = int(recipe.limits.cpus * 1e9)
        if _CONTAINER_NAME.match(record.sandbox_id):
            options["name"] = f"tether-{record.sandbox_id}"
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise InvalidRequest(f"image {image!r} is not on this docker host; pull or build it first") from None
        except docker.errors.APIError as error:
            raise DockerError(f"docker could not inspect image {image!r}: {error.explanation or error}") from None
        if self.docker_init is None:
            self.docker_init = bool(self.client.info().get("InitBinary"))
        while True:
            if self.docker_init:
                command, init = KEEP_ALIVE_COMMAND, True
            else:
                command, init = REAPER_INIT_COMMAND, False
            container = None
            try:
                container = self.client.containers.create(image, command, init=init, **options)
                container.start()
                return str(container.id)
            except docker.errors.APIError as error:
                if container is not None:
                    self.remove(container.id)
                message = str(error.explanation or error)
                if init and "docker-init" in message:
                    self.docker_init = False
                    continue
                raise SandboxNotRunning(f"docker could not start a container from {image!r}: {message}") from None

    def remove(self, container_id: str) -> None:
        """Force-remove a container; a container already gone is fine."""
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True)

    def labelled(self, label: str, value: str) -> list[Found]:
        """All containers, running or not, with ``label=value``."""
        found = self.client.api.containers(all=True, filters={"label": f"{label}={value}"})
        return [Found(entry["Id"], entry.get("State") == "running", entry.get("Labels") or {}) for entry in found]

    def state(self, container_id: str) -> str:
        """``running``, another docker state, or ``gone``."""
        try:
            return str(self.client.api.inspect_container(container_id)["State"]["Status"])
        except docker.errors.NotFound:
            return "gone"
