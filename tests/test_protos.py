"""The committed generated code is exactly what ``protos.generate`` makes from the .proto, and recipes round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import generate
from protos.recipes import KNOWN_KEYS, load_recipe, recipe_from_dict, recipe_to_dict
from protos.tether.sandbox.v1 import sandbox_pb2 as pb

PACKAGE_DIR = Path(generate.__file__).resolve().parent


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert {p.name for p in written} == {"sandbox_pb2.py", "sandbox_pb2_grpc.py", "sandbox_pb2.pyi"}
    for path in written:
        committed = PACKAGE_DIR / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} differs from what the .proto generates; run `python -m protos.generate`"
        )


def test_default_recipe() -> None:
    recipe = load_recipe(None)
    assert recipe == load_recipe("default")
    assert recipe.name == "default"
    assert recipe.image == ""
    assert recipe.workdir == "/workspace"
    assert not recipe.network
    assert recipe.limits.pids == 512
    assert recipe.limits.memory_bytes == 2 << 30
    assert recipe.idle_ttl_seconds == 30 * 60


def test_recipe_round_trips_exactly_through_a_dict() -> None:
    recipe = recipe_from_dict(
        {
            "name": "full",
            "image": "python:3.12",
            "base": "/srv/template",
            "setup": ["pip install -e .", "make"],
            "env": {"B": "2", "A": "1"},
            "workdir": "/src",
            "cpus": 1.5,
            "memory": "512m",
            "pids": 100,
            "network": True,
            "idle_ttl": "1h30m",
            "labels": {"team": "x"},
        }
    )
    assert recipe.limits.memory_bytes == 512 << 20
    assert recipe.idle_ttl_seconds == 5400
    as_dict = recipe_to_dict(recipe)
    assert list(as_dict) == list(KNOWN_KEYS)
    assert recipe_from_dict(as_dict) == recipe
    assert recipe_to_dict(recipe_from_dict(as_dict)) == as_dict
    assert recipe_from_dict(recipe_to_dict(pb.Recipe())) == pb.Recipe()


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"imge": "x", "setpu": []}, "unknown recipe keys: imge, setpu"),
        ({"memory": "lots"}, "memory"),
        ({"idle_ttl": "soon"}, "idle_ttl"),
        ({"pids": -1}, "pids"),
        ({"network": "yes"}, "network"),
        ({"setup": "make"}, "setup"),
        ({"env": {"PORT": 8080}}, "env"),
        ({"cpus": "two"}, "cpus"),
    ],
)
def test_bad_recipes_name_the_key(data: dict, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        recipe_from_dict(data)


def test_recipe_files_and_names(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('image = "alpine"\nsetup = ["apk add git"]\nmemory = 1073741824\n')
    recipe = load_recipe(str(path))
    assert recipe.name == "mine"
    assert recipe.image == "alpine"
    assert recipe.limits.memory_bytes == 1 << 30
    with pytest.raises(FileNotFoundError, match="shipped recipes: default"):
        load_recipe("no-such-recipe")
    broken = tmp_path / "broken.toml"
    broken.write_text("image = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_recipe(str(broken))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('imagee = "x"\n')
    with pytest.raises(ValueError, match="unknown.toml: unknown recipe keys: imagee"):
        load_recipe(str(unknown))
