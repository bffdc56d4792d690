"""`tether sessions ...` run as a real subprocess against a real store, and import hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from session.store import SessionStore
from tests.fixtures.session_support import (
    assert_valid_messages,
    assistant_payload,
    meta_payload,
    text_block,
    tool_result_payload,
    tool_use_block,
    write_log_file,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(tmp_path: Path) -> dict[str, object]:
    """A home with a session in `project` (with a tool call) and one in `other`."""
    home, project, other = tmp_path / "home", tmp_path / "project", tmp_path / "other"
    project.mkdir()
    other.mkdir()
    store = SessionStore(home)
    log = store.create(project)
    log.append("user", {"content": "Count the lines of the changelog"})
    log.append(
        "assistant", assistant_payload(text_block("Counting."), tool_use_block("toolu_1", command="wc -l CHANGELOG"))
    )
    log.append("tool_result", tool_result_payload("toolu_1", "4242 CHANGELOG\nsee ```fenced``` text"))
    log.append("assistant", assistant_payload(text_block("It has 4242 lines."), cost=0.02))
    log.close()
    elsewhere = store.create(other)
    elsewhere.append("user", {"content": "Something about pelicans"})
    elsewhere.close()
    return {"home": home, "project": project, "other": other, "log": log, "elsewhere": elsewhere}


def run_cli(world: dict[str, object], *arguments: str, module: str = "session.cli") -> subprocess.CompletedProcess[str]:
    """Run the command in the project directory with the world's home."""
    environment = {**os.environ, "TETHER_HOME": str(world["home"]), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=world["project"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_shows_this_project_by_default_and_everything_with_all(world: dict[str, object]) -> None:
    log, elsewhere = world["log"], world["elsewhere"]
    result = run_cli(world, "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "UPDATED", "MSGS", "TITLE"]
    assert len(rows) == 1 and rows[0].startswith(log.session_id[:8])
    assert "Count the lines of the changelog" in rows[0] and " 3 " in rows[0]

    everything = run_cli(world, "list", "--all")
    assert everything.returncode == 0
    assert elsewhere.session_id[:8] in everything.stdout and log.session_id[:8] in everything.stdout
    assert "PROJECT" in everything.stdout

    other = run_cli(world, "list", "--project", str(world["other"]))
    assert elsewhere.session_id[:8] in other.stdout and log.session_id[:8] not in other.stdout


def test_show_prints_the_summary_and_the_transcript(world: dict[str, object]) -> None:
    log = world["log"]
    result = run_cli(world, "show", log.session_id[:6])
    assert result.returncode == 0, result.stderr
    assert f"Session   {log.session_id}" in result.stdout
    assert "Cost      $0.0210" in result.stdout  # 0.001 + 0.02
    assert "Count the lines of the changelog" in result.stdout
    assert "wc -l CHANGELOG" in result.stdout and "4242 CHANGELOG" in result.stdout
    assert "It has 4242 lines." in result.stdout


def test_show_never_prints_a_dollar_zero_for_answers_of_an_unpriced_model(world: dict[str, object]) -> None:
    store = SessionStore(world["home"])
    unpriced = store.create(world["project"])
    unpriced.append("user", {"content": "hi"})
    unpriced.append("assistant", assistant_payload(text_block("hello"), cost=None))
    mixed = store.create(world["project"])
    mixed.append("user", {"content": "hi"})
    mixed.append("assistant", assistant_payload(text_block("hello"), cost=0.5))
    mixed.append("user", {"content": "again"})
    mixed.append("assistant", assistant_payload(text_block("hello"), cost=None))
    store.close()
    shown = run_cli(world, "show", unpriced.session_id)
    assert shown.returncode == 0, shown.stderr
    (cost,) = [line for line in shown.stdout.splitlines() if line.startswith("Cost")]
    assert cost == "Cost      unknown (no price for the model of 1 answer)"
    shown = run_cli(world, "show", mixed.session_id)
    (cost,) = [line for line in shown.stdout.splitlines() if line.startswith("Cost")]
    assert cost == "Cost      $0.5000 plus unknown (no price for the model of 1 answer)"


def test_search_finds_a_tool_result_word_with_a_snippet(world: dict[str, object]) -> None:
    log, elsewhere = world["log"], world["elsewhere"]
    result = run_cli(world, "search", "4242", "changelog")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(log.session_id[:8])
    assert "[4242]" in result.stdout
    assert "pelicans" not in run_cli(world, "search", "pelicans").stdout.lower().replace("no matches", "")
    everywhere = run_cli(world, "search", "pelicans", "--all")
    assert elsewhere.session_id[:8] in everywhere.stdout and "[pelicans]" in everywhere.stdout


def test_export_json_is_the_conversation_and_markdown_is_readable(world: dict[str, object]) -> None:
    log = world["log"]
    exported = run_cli(world, "export", log.session_id[:8], "--format", "json")
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["session_id"] == log.session_id
    assert document["project_dir"] == str(Path(world["project"]).resolve())
    assert document["messages"] == SessionStore(world["home"]).open(log.session_id).conversation()
    assert_valid_messages(document["messages"])

    markdown = run_cli(world, "export", log.session_id, module="session")
    assert markdown.returncode == 0, markdown.stderr
    text = markdown.stdout
    assert text.startswith("# Count the lines of the changelog")
    assert "## User" in text and "## Assistant" in text and "**Tool call: Bash**" in text
    assert "````\n4242 CHANGELOG\nsee ```fenced``` text\n````" in text  # fence longer than the content's


def test_errors_are_one_line_on_stderr_and_exit_1(world: dict[str, object], tmp_path: Path) -> None:
    write_log_file(
        Path(world["home"]),
        Path(world["project"]),
        [("meta", meta_payload(Path(world["project"])))],
        session_id="eeee1111-0000-4000-8000-000000000000",
    )
    write_log_file(
        Path(world["home"]),
        Path(world["project"]),
        [("meta", meta_payload(Path(world["project"])))],
        session_id="eeee2222-0000-4000-8000-000000000000",
    )
    cases = {
        ("show", "0000ffff"): "no session matches",
        ("export", "eeee"): "matches 2 sessions: eeee1111-0000-4000-8000-000000000000, eeee2222",
        ("export", "eeee1111", "--format", "pdf"): "invalid choice",
        ("frobnicate",): "invalid choice",
        ("show",): "required",
        (): "required",
    }
    for arguments, expected in cases.items():
        result = run_cli(world, *arguments)
        assert result.returncode == 1, (arguments, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tether sessions: error: "), (arguments, result.stderr)
        assert expected in lines[0], (arguments, lines[0])
        assert result.stdout == ""
    assert run_cli(world, "--help").returncode == 0


def test_a_damaged_log_is_shown_with_a_warning(world: dict[str, object]) -> None:
    log = world["log"]
    with open(log.path, "ab") as file:
        file.write(b"\x00\x00 not json\n")
    result = run_cli(world, "show", log.session_id)
    assert result.returncode == 0
    assert "It has 4242 lines." in result.stdout
    assert "warning" in result.stderr and str(log.path) in result.stderr


def test_session_never_imports_textual_or_anthropic() -> None:
    modules = sorted(
        "session." + path.stem for path in (ROOT / "session").glob("*.py") if path.stem not in {"__init__", "__main__"}
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'textual', 'anthropic', 'agent', 'tui'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert "session.cli" in modules and "session.store" in modules
    assert result.stdout.strip() == "[]"
