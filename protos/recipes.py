"""Sandbox recipes as data: TOML files to and from ``pb.Recipe``.

A recipe is stored in the session log when used (``recipe_to_dict``), so any
later harness can rebuild the same sandbox (``recipe_from_dict``); the two are
exact inverses. Keys a recipe leaves out take the contract's zero values.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

from protos.tether.sandbox.v1 import sandbox_pb2 as pb

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
"""Where the shipped recipes live (``<name>.toml``)."""

KNOWN_KEYS = (
    "name",
    "image",
    "base",
    "setup",
    "env",
    "workdir",
    "cpus",
    "memory",
    "pids",
    "network",
    "idle_ttl",
    "labels",
)
"""Every key a recipe may have, in the order ``recipe_to_dict`` writes them."""

_MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UINT32_MAX = (1 << 32) - 1


def load_recipe(name_or_path: str | None = None) -> pb.Recipe:
    """Load a recipe: None or "default" = the shipped default, a bare name = a shipped recipe, else a TOML file.

    Raises ``ValueError`` for a bad recipe and ``FileNotFoundError`` for a missing one.
    """
    if name_or_path is None or name_or_path == "":
        name_or_path = "default"
    path = Path(name_or_path).expanduser()
    looks_like_path = "/" in name_or_path or name_or_path.endswith(".toml") or path.is_file()
    if not looks_like_path:
        path = RECIPES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
            raise FileNotFoundError(
                f"no recipe named {name_or_path!r} (shipped recipes: {shipped}); "
                "give a path to a .toml file for your own"
            )
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    try:
        return recipe_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def recipe_from_dict(data: dict[str, Any]) -> pb.Recipe:
    """Build a ``pb.Recipe`` from a TOML/JSON-shaped dict; ``ValueError`` names any bad or unknown key."""
    if not isinstance(data, dict):
        raise ValueError(f"a recipe must be a table, not {type(data).__name__}")
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        raise ValueError(f"unknown recipe keys: {', '.join(unknown)} (known keys: {', '.join(KNOWN_KEYS)})")
    recipe = pb.Recipe(
        name=_string(data, "name"),
        image=_string(data, "image"),
        base=_string(data, "base"),
        workdir=_string(data, "workdir"),
        network=_boolean(data, "network"),
        idle_ttl_seconds=_duration(data.get("idle_ttl", 0)),
    )
    recipe.setup.extend(_string_list(data, "setup"))
    recipe.env.update(_string_table(data, "env"))
    recipe.labels.update(_string_table(data, "labels"))
    limits = pb.Limits(
        cpus=_cpus(data.get("cpus", 0)), memory_bytes=_memory(data.get("memory", 0)), pids=_count(data, "pids")
    )
    if limits != pb.Limits():
        # Only then: an empty-but-present submessage would not compare equal to an absent one.
        recipe.limits.CopyFrom(limits)
    return recipe


def recipe_to_dict(recipe: pb.Recipe) -> dict[str, Any]:
    """Every field of ``recipe`` as plain JSON/TOML data; ``recipe_from_dict`` gives it back exactly."""
    return {
        "name": recipe.name,
        "image": recipe.image,
        "base": recipe.base,
        "setup": list(recipe.setup),
        "env": dict(sorted(recipe.env.items())),
        "workdir": recipe.workdir,
        "cpus": recipe.limits.cpus,
        "memory": recipe.limits.memory_bytes,
        "pids": recipe.limits.pids,
        "network": recipe.network,
        "idle_ttl": recipe.idle_ttl_seconds,
        "labels": dict(sorted(recipe.labels.items())),
    }


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"recipe key {key!r} must be a string, not {value!r}")
    return value


def _boolean(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"recipe key {key!r} must be true or false, not {value!r}")
    return value


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
        raise ValueError(f"recipe key {key!r} must be a whole number >= 0, not {value!r}")
    return value


def _string_list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"recipe key {key!r} must be a list of strings, not {value!r}")
    return value


def _string_table(data: dict[str, Any], key: str) -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"recipe key {key!r} must be a table of strings (quote numbers), not {value!r}")
    return value


def _cpus(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"recipe key 'cpus' must be a number >= 0 (e.g. 1.5), not {value!r}")
    return float(value)


def _memory(value: Any) -> int:
    """Bytes from an int or a size like "2g", "512m", "1.5GiB"."""
    return parse_size(value, "recipe key 'memory'")


def parse_size(value: Any, what: str) -> int:
    """Bytes from an int or a size like "2g", "512m", "1.5GiB"; ``ValueError`` names ``what``."""
    if isinstance(value, bool):
        raise ValueError(f'{what} must be bytes or a size like "2g", not {value!r}')
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        match = _MEMORY.fullmatch(value.strip())
        if match:
            return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])
    raise ValueError(f'{what} must be bytes or a size like "2g" or "512m", not {value!r}')


def _duration(value: Any) -> int:
    """Seconds from an int or a duration like "30m", "1h30m", "90s"."""
    if isinstance(value, bool):
        raise ValueError(f"recipe key 'idle_ttl' must be seconds or a duration like \"30m\", not {value!r}")
    if isinstance(value, int) and 0 <= value <= _UINT32_MAX:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return int(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
            if seconds <= _UINT32_MAX:
                return seconds
    raise ValueError(f'recipe key \'idle_ttl\' must be seconds or a duration like "30m" or "1h", not {value!r}')
