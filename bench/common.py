"""Shared pieces of the benchmarks: timing, alternating runs, the peer CLIs, the fake model."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(
    a: Callable[[], object], b: Callable[[], object], runs: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Run A B A B ... ``runs`` times each after ``warmup`` of each; return both lists of seconds."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for _ in range(runs):
        times_a.append(timed(a))
        times_b.append(timed(b))
    return times_a, times_b


def interleave(fns: list[Callable[[], object]], runs: int, warmup: int = 1) -> list[list[float]]:
    """Like ``alternate`` for any number of contenders: A B C A B C ..."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            times[i].append(timed(fn))
    return times


def summary(name: str, times: list[float], unit: float = 1.0, suffix: str = "s") -> str:
    """``name: min / median / max`` in the given unit."""
    return (
        f"{name:<44} min {min(times) / unit:8.3f}{suffix}  median {statistics.median(times) / unit:8.3f}{suffix}"
        f"  max {max(times) / unit:8.3f}{suffix}  (n={len(times)})"
    )


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def claude_code() -> list[str]:
    """The Claude Code CLI, installed from npm into bench/.cache on first use."""
    local = CACHE / "claude" / "node_modules" / ".bin" / "claude"
    if not local.exists():
        if shutil.which("npm") is None:
            raise SystemExit("bench: npm is needed to install Claude Code for the comparison")
        (CACHE / "claude").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "@anthropic-ai/claude-code"],
            cwd=CACHE / "claude",
            check=True,
        )
    return [str(local)]


def seed_claude_home(home: Path, project: Path) -> None:
    """The first-run config Claude Code needs to start interactive without reaching its vendor."""
    config = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "customApiKeyResponses": {"approved": ["sk-test"], "rejected": []},
        "projects": {str(project): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}},
    }
    (home / ".claude.json").write_text(json.dumps(config))


def claude_ready(screen: str) -> bool:
    """Claude Code's prompt is drawn and takes input."""
    return ("shift+tab to cycle" in screen or "for shortcuts" in screen) and any(
        line.startswith("❯") for line in screen.splitlines()
    )


def tether_ready(screen: str) -> bool:
    """tether's prompt takes input (its placeholder shows) and the sandbox is ready."""
    return "Type a prompt" in screen and ": ready" in screen


def tether_prompt_ready(screen: str) -> bool:
    """tether's prompt takes input and the status bar is drawn (the sandbox may still be starting)."""
    return "Type a prompt" in screen and "sandbox " in screen


def tether() -> list[str]:
    """The tether CLI of this checkout."""
    return [sys.executable, "-m", "tui.cli"]


def isolated_env(base_url: str, home: Path) -> dict[str, str]:
    """Environment for either CLI: the fake model, a fresh HOME, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "TETHER_", "CLAUDE"))}
    # A user's Python keeps compiled bytecode (pip writes it at install, an editable checkout on first
    # run); an environment that turns that off would time recompiling tether's own modules at every start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY="sk-test",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        TETHER_HOME=str(home / "tether"),
        PYTHONPATH=str(ROOT),
    )
    home.mkdir(parents=True, exist_ok=True)
    return env


def scratch(prefix: str) -> Path:
    """A fresh temporary directory."""
    return Path(tempfile.mkdtemp(prefix=f"tether-bench-{prefix}-"))
