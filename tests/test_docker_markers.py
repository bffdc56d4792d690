"""``-m "not docker"`` runs no test that needs Docker, and ``-m docker`` finds them all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def collected(marker: str) -> set[str]:
    """Node ids pytest collects under ``-m MARKER``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", marker, "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {line for line in proc.stdout.splitlines() if "::" in line}


def test_docker_marker_splits_the_suite() -> None:
    docker, rest = collected("docker"), collected("not docker")
    assert docker and rest and not docker & rest
    assert not [nodeid for nodeid in rest if "[docker" in nodeid or "docker]" in nodeid or "-docker" in nodeid]
    assert {nodeid for nodeid in docker | rest if nodeid.startswith("tests/test_docker_provider.py")} <= docker
    assert (
        "tests/test_workspace_sessions.py::test_docker_container_killed_twenty_times_loses_no_completed_work" in docker
    )
