"""The layers import one way (tui → agent → session, protos), the headless ones never import Textual,
and the sandbox host knows only the contract."""

from __future__ import annotations

import ast
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
    code = "import sys\nimport tui.cli, agent.headless, tui.resident.server\nprint('textual' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


LAYER_RULES = {
    "agent": ("tui",),
    "session": ("tui", "agent", "remote_sandbox"),
    "protos": ("tui", "agent", "session", "remote_sandbox"),
    "remote_sandbox": ("tui", "agent", "session"),
}
"""What each lower layer must never import, anywhere in its source: at the top, inside a function, or lazily."""


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` statement in ``path`` names (absolute ones), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


@pytest.mark.parametrize("package", sorted(LAYER_RULES))
def test_layers_never_import_upwards_not_even_lazily(package: str) -> None:
    forbidden = LAYER_RULES[package]
    leaks = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in _imported_names(path)
        if name.split(".")[0] in forbidden
    ]
    assert not leaks, "\n".join(leaks)


def test_the_layer_scan_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def later():\n    import tui.cli\n    from tui import app\n    __import__('tui.resident')\n")
    assert [name for _, name in _imported_names(module)] == ["tui.cli", "tui", "tui.resident"]


def test_resident_client_path_never_imports_textual_or_the_sdk() -> None:
    code = (
        "import sys\n"
        "import tui.cli, tui.resident.client, tui.resident.cli, tui.resident.wire\n"
        "print('textual' in sys.modules, 'anthropic' in sys.modules, 'agent.harness' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_the_tui_start_path_leaves_markdown_and_the_sdk_for_later() -> None:
    # A new session's first screen shows no Markdown, sends nothing and has no event to show: markdown-it,
    # Pygments and Rich's Markdown (~20 ms), the harness, its events (~10 ms of dataclasses) and the SDK
    # are imported on threads once the prompt takes input.
    later = ["markdown_it", "pygments", "rich.markdown", "tui.streaming_markdown", "agent.events", "agent.harness"]
    code = f"import sys\nimport tui.cli, tui.app\nprint(*(name in sys.modules for name in {[*later, 'anthropic']!r}))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * (len(later) + 1)
