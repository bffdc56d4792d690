"""The code that runs inside sandboxes, as files: shell scripts parse, the launcher is a module, both ship."""

from __future__ import annotations

import subprocess
from importlib import resources

import pytest

from remote_sandbox.providers.docker.exec_server import SCRIPTS
from remote_sandbox.providers.local import launcher_main
from remote_sandbox.providers.local.launcher import launcher_source

SCRIPT_DIR = resources.files("remote_sandbox.providers.docker").joinpath("scripts")


@pytest.mark.parametrize("name", SCRIPTS)
def test_exec_server_scripts_parse(name: str) -> None:
    text = SCRIPT_DIR.joinpath(name).read_text()
    checked = subprocess.run(["sh", "-n"], input=text.encode(), capture_output=True, check=False)
    assert checked.returncode == 0, checked.stderr.decode()


def test_sh_n_catches_a_broken_script() -> None:
    checked = subprocess.run(["sh", "-n"], input=b"if then fi\n", capture_output=True, check=False)
    assert checked.returncode != 0


def test_every_shipped_script_is_listed() -> None:
    shipped = {entry.name for entry in SCRIPT_DIR.iterdir() if entry.name.endswith(".sh")}
    assert shipped == set(SCRIPTS)


def test_the_launcher_is_the_module_the_sandbox_runs() -> None:
    assert (
        launcher_source() == resources.files("remote_sandbox.providers.local").joinpath("launcher_main.py").read_text()
    )
    # Imported, it runs nothing; its helpers are plain functions.
    assert launcher_main.find_program("sh", "/nonexistent:/bin:/usr/bin") in ("/bin/sh", "/usr/bin/sh")
    assert launcher_main.find_program("/x/y", "") == "/x/y"
    assert launcher_main.find_program("no-such-program-anywhere", "/bin") is None


def test_the_launcher_runs_on_the_oldest_python_it_claims() -> None:
    compiled = subprocess.run(
        ["python3", "-I", "-S", "-c", f"compile({launcher_source()!r}, 'launcher', 'exec')"],
        capture_output=True,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr.decode()
