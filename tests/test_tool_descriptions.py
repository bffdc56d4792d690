"""Tools describe themselves: read-only, permission family and subject, summary, and how they are shown."""

from __future__ import annotations

import pytest

from agent.permissions import PermissionGate, PermissionSettings, Rule, next_mode
from agent.tools.bash import command_prefix
from agent.tools.catalog import default_tools

TOOLS = {tool.name: tool for tool in default_tools()}


def test_read_only_has_one_definition() -> None:
    assert {name for name, tool in TOOLS.items() if tool.read_only} == {
        "Read",
        "Glob",
        "Grep",
        "TodoWrite",
        "ExitPlanMode",
    }
    assert not any(tool.read_only and tool.changes_files for tool in TOOLS.values())


@pytest.mark.parametrize(
    ("name", "family", "args", "subject"),
    [
        ("Bash", "Bash", {"command": "npm test"}, "npm test"),
        ("Read", "Read", {"file_path": "/workspace/a.py"}, "/workspace/a.py"),
        ("Write", "Edit", {"file_path": "/workspace/a.py", "content": ""}, "/workspace/a.py"),
        ("Edit", "Edit", {"file_path": "/workspace/a.py"}, "/workspace/a.py"),
        ("Glob", "Read", {"pattern": "*.py", "path": "/workspace/src"}, "/workspace/src"),
        ("Grep", "Read", {"pattern": "x", "path": "/workspace/src"}, "/workspace/src"),
        ("TodoWrite", "TodoWrite", {"todos": []}, None),
    ],
)
def test_family_and_rule_subject(name: str, family: str, args: dict, subject: str | None) -> None:
    tool = TOOLS[name]
    assert tool.permission_family == family
    assert tool.rule_subject(args) == subject


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        ("npm test -- --watch", "Bash(npm test:*)"),
        ("seq 1 300000", "Bash(seq:*)"),
        ("git status --short", "Bash(git status:*)"),
        ("ls -la", "Bash(ls:*)"),
        ("make", "Bash(make:*)"),
        ("cd x && rm -rf y", "Bash(cd x && rm -rf y)"),
        ("FOO=1 npm test", "Bash(FOO=1 npm test)"),
    ],
)
def test_allow_always_offers_a_prefix_rule(command: str, rule: str) -> None:
    suggested = TOOLS["Bash"].suggested_rule({"command": command}, "/workspace")
    assert suggested == rule
    assert Rule.parse(suggested).matches(TOOLS["Bash"], {"command": command}, "/workspace")


def test_a_prefix_is_none_where_a_second_command_could_ride_along() -> None:
    assert command_prefix("git status; rm x") is None
    assert command_prefix("echo 'unclosed") is None


def test_path_rules_are_offered_relative_to_the_workspace() -> None:
    assert TOOLS["Write"].suggested_rule({"file_path": "/workspace/src/a.py"}, "/workspace") == "Edit(src/a.py)"


def test_views_are_plain_data_of_the_right_kind() -> None:
    bash = TOOLS["Bash"].call_view({"command": "npm test", "description": "Run the tests"})
    assert (bash.kind, bash.text, bash.description, bash.title) == (
        "command",
        "npm test",
        "Run the tests",
        "Bash  npm test",
    )
    edit = TOOLS["Edit"].call_view({"file_path": "/workspace/a.py", "old_string": "x = 1\n", "new_string": "x = 2\n"})
    assert edit.kind == "diff" and "-x = 1" in edit.text and "+x = 2" in edit.text and "a/workspace/a.py" in edit.text
    todo = TOOLS["TodoWrite"].call_view(
        {"todos": [{"content": "a", "status": "completed"}, {"content": "b", "status": "pending"}]}
    )
    assert todo.kind == "checklist" and [i.status for i in todo.items] == ["completed", "pending"]
    assert todo.title == "TodoWrite  1/2 done"


def test_exit_plan_mode_is_offered_only_in_plan_mode() -> None:
    assert [
        mode
        for mode in ("default", "acceptEdits", "plan", "bypassPermissions")
        if TOOLS["ExitPlanMode"].offered_in(mode)
    ] == ["plan"]


def test_shift_tab_cycle(tmp_path) -> None:
    assert next_mode("default") == "acceptEdits"
    assert next_mode("acceptEdits") == "plan"
    assert next_mode("plan") == "default"
    assert next_mode("plan", with_bypass=True) == "bypassPermissions"
    assert next_mode("bypassPermissions", with_bypass=True) == "default"
    gate = PermissionGate("default", PermissionSettings(), tmp_path, lambda: "/workspace")
    assert [gate.cycle_mode() for _ in range(4)] == ["acceptEdits", "plan", "default", "acceptEdits"]
    bypass = PermissionGate("bypassPermissions", PermissionSettings(), tmp_path, lambda: "/workspace")
    assert [bypass.cycle_mode() for _ in range(4)] == ["default", "acceptEdits", "plan", "bypassPermissions"]
