"""The gRPC I/O engine tether's processes choose (protos.grpc_engine): only before grpc starts, never over the user's.

Each case runs in a fresh interpreter: this one imported grpc long ago, which is
exactly the case where nothing may change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc

from protos.grpc_engine import MEASURED_RELEASES, POLLING_EXPERIMENTS, installed_grpc_version

ROOT = Path(__file__).resolve().parent.parent

WAIT_S = 60.0
"""Bound on each interpreter."""

_REPORT = """
import os, sys
from protos import grpc_engine
{before}
chose = grpc_engine.choose_io_engine()
import grpc
channel = grpc.insecure_channel("unix:///nonexistent/tether.sock")
channel.close()
print(chose, os.environ.get("GRPC_EXPERIMENTS", "<unset>"))
"""


def run_fresh(before: str = "", **env: str) -> tuple[str, str]:
    """Run ``_REPORT`` in a new interpreter (``before`` first); its printed line and its stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", _REPORT.format(before=before)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    return done.stdout.strip(), done.stderr


def test_a_fresh_process_on_a_measured_release_polls_its_own_sockets_and_grpc_stays_quiet() -> None:
    line, stderr = run_fresh()
    if installed_grpc_version().startswith(MEASURED_RELEASES):
        assert line == f"True {POLLING_EXPERIMENTS}"
    else:
        assert line == "False <unset>"
    # gRPC logs an experiment it does not know on stderr whatever GRPC_VERBOSITY says: there is none.
    assert stderr == ""


def test_the_users_own_experiments_are_kept() -> None:
    line, _ = run_fresh(GRPC_EXPERIMENTS="tcp_rcv_lowat")
    assert line == "False tcp_rcv_lowat"


def test_too_late_once_grpc_is_imported() -> None:
    line, _ = run_fresh(before="import grpc")
    assert line == "False <unset>"


def test_a_release_it_was_not_measured_on_is_left_alone() -> None:
    line, stderr = run_fresh(before="grpc_engine.installed_grpc_version = lambda: '1.99.0'")
    assert line == "False <unset>"
    assert stderr == ""


def test_the_installed_version_is_read_without_importing_grpc() -> None:
    code = "import sys; from protos.grpc_engine import installed_grpc_version as v; print(v(), 'grpc' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S)
    version, imported = done.stdout.split()
    assert version == grpc.__version__
    assert imported == "False"
