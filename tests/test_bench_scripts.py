"""Every benchmark script still imports: a refactor that moves what one uses must not leave it broken unseen."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parent.parent / "bench").glob("bench_*.py")
    if p.stem != "bench_sandbox_support"  # the sandbox benchmarks' shared parts, not a benchmark
)


def test_there_are_benchmarks_to_check() -> None:
    assert len(SCRIPTS) >= 10, SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_benchmark_imports(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"
