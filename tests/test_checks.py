"""The project's checked contracts: lint, format, types, and the layer rule, as CI runs them.

Each runs the tool the venv installs (pinned in pyproject.toml) over the whole
tree, so a change that breaks one fails the suite with the tool's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a check from the project root; its output is the failure message."""
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([sys.executable, "-m", "ruff", "check", "--no-cache", "."], id="ruff-check"),
        pytest.param([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], id="ruff-format"),
        pytest.param([sys.executable, "-m", "mypy"], id="mypy"),
        pytest.param([str(BIN / "lint-imports"), "--no-cache"], id="import-linter"),
    ],
)
def test_the_tree_passes(argv: list[str]) -> None:
    result = run(*argv)
    assert result.returncode == 0, f"{' '.join(argv[-3:])} failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


def test_the_layer_contract_catches_a_lazy_import(tmp_path: Path) -> None:
    """import-linter sees an import inside a function, the kind the old hygiene test missed."""
    bad = ROOT / "agent" / "_checks_probe_lazy.py"
    bad.write_text(
        'def probe() -> None:\n    """A lazy import of the front end."""\n    import tui.cli  # noqa: F401\n'
    )
    try:
        result = run(str(BIN / "lint-imports"), "--no-cache")
    finally:
        bad.unlink()
    assert result.returncode != 0 and "agent._checks_probe_lazy -> tui.cli" in result.stdout, result.stdout
