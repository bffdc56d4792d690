"""The headless layers never import Textual, and the sandbox host knows only the contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADLESS_PACKAGES = ["agent", "session", "remote_sandbox", "protos"]


def _modules_of(package: str) -> list[str]:
    base = ROOT / package
    names = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return names


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("package", HEADLESS_PACKAGES)
def test_headless_package_never_imports_textual(package: str) -> None:
    modules = _modules_of(package)
    assert modules, f"no modules found in {package}"
    loaded = _loaded_after_import(modules)
    assert "textual" not in loaded, f"importing {package} pulled in textual"


def test_sandbox_host_imports_only_the_contract() -> None:
    loaded = _loaded_after_import(_modules_of("remote_sandbox"))
    for forbidden in ("agent", "session", "tui"):
        leaked = sorted(m for m in loaded if m == forbidden or m.startswith(forbidden + "."))
        assert not leaked, f"remote_sandbox imported {leaked}"


def test_headless_cli_path_never_imports_textual() -> None:
    code = (
        "import sys\n"
        "import tui.cli, agent.headless\n"
        "print('textual' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
