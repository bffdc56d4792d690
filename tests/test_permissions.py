"""Permission modes and rules: deny wins, allow rules skip the question, "always" is remembered."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent import events as ev
from agent.permissions import PermissionGate, PermissionSettings, Rule, SettingsError, project_settings_path

WORKDIR = "/workspace"


def gate(tmp_path: Path, mode: str, allow=(), deny=()) -> PermissionGate:
    settings = PermissionSettings.load([], allow=list(allow), deny=list(deny))
    return PermissionGate(mode, settings, tmp_path, lambda: WORKDIR)


class Asker:
    """A driver that answers every permission request with a fixed decision, and counts them."""

    def __init__(self, decision: ev.PermissionDecision) -> None:
        self.decision = decision
        self.asked: list[ev.PermissionRequest] = []

    async def __call__(self, event: ev.AgentEvent) -> None:
        if isinstance(event, ev.PermissionRequest):
            self.asked.append(event)
            event.future.set_result(self.decision)


async def check(g: PermissionGate, tool: str, args: dict, asker: Asker) -> ev.PermissionDecision:
    return await g.check(tool, "toolu_1", args, asker)


@pytest.mark.parametrize(
    ("mode", "tool", "asks"),
    [
        ("default", "Bash", True),
        ("default", "Write", True),
        ("default", "Edit", True),
        ("default", "Read", False),
        ("acceptEdits", "Bash", True),
        ("acceptEdits", "Edit", False),
        ("bypassPermissions", "Bash", False),
    ],
)
async def test_modes_ask_for_what_they_say(tmp_path, mode, tool, asks) -> None:
    asker = Asker(ev.PermissionDecision(allow=False, reason="no"))
    decision = await check(gate(tmp_path, mode), tool, {"command": "ls", "file_path": "/workspace/a"}, asker)
    assert bool(asker.asked) is asks
    assert decision.allow is (not asks)


async def test_plan_mode_allows_only_read_only_tools(tmp_path) -> None:
    asker = Asker(ev.PermissionDecision(allow=True))
    g = gate(tmp_path, "plan")
    assert (await check(g, "Read", {"file_path": "/workspace/a"}, asker)).allow
    denied = await check(g, "Bash", {"command": "ls"}, asker)
    assert not denied.allow and "plan mode" in denied.reason
    assert not asker.asked


async def test_bash_prefix_and_exact_rules(tmp_path) -> None:
    asker = Asker(ev.PermissionDecision(allow=False))
    g = gate(tmp_path, "default", allow=["Bash(git status:*)", "Bash(make test)"])
    assert (await check(g, "Bash", {"command": "git status --short"}, asker)).allow
    assert (await check(g, "Bash", {"command": "git status"}, asker)).allow
    assert (await check(g, "Bash", {"command": "make test"}, asker)).allow
    assert not (await check(g, "Bash", {"command": "git statusx"}, asker)).allow
    assert not (await check(g, "Bash", {"command": "make test && rm -rf /"}, asker)).allow
    for smuggled in (
        "git status && rm -rf ~",
        "git status; rm x",
        "git status | sh",
        "git status $(rm x)",
        "git status > f",
    ):
        assert not (await check(g, "Bash", {"command": smuggled}, asker)).allow, smuggled
    assert len(asker.asked) == 7


async def test_path_rules_are_globs_under_the_workspace(tmp_path) -> None:
    asker = Asker(ev.PermissionDecision(allow=False))
    g = gate(tmp_path, "default", allow=["Edit(src/**)"])
    assert (await check(g, "Edit", {"file_path": "/workspace/src/a/b.py"}, asker)).allow
    assert not (await check(g, "Edit", {"file_path": "/workspace/tests/b.py"}, asker)).allow


async def test_read_rules_cover_grep_and_glob_and_edit_rules_cover_write(tmp_path) -> None:
    asker = Asker(ev.PermissionDecision(allow=True))
    g = gate(tmp_path, "bypassPermissions", deny=["Read(secret/**)", "Read(.env)", "Edit(locked/**)"])
    for tool, args in [
        ("Read", {"file_path": "/workspace/secret/key"}),
        ("Grep", {"pattern": "token", "path": "secret"}),
        ("Grep", {"pattern": "token", "path": "/workspace/secret/sub"}),
        ("Grep", {"pattern": "token", "path": ".env"}),
        ("Glob", {"pattern": "**/*", "path": "./secret"}),
        ("Write", {"file_path": "/workspace/locked/a", "content": "x"}),
        ("Edit", {"file_path": "locked/b", "old_string": "a", "new_string": "b"}),
    ]:
        decision = await check(g, tool, args, asker)
        assert not decision.allow, (tool, args)
        assert "denied by the rule" in decision.reason
    for tool, args in [
        ("Grep", {"pattern": "token", "path": "src"}),
        ("Glob", {"pattern": "*.py"}),
        ("Write", {"file_path": "/workspace/open/a", "content": "x"}),
        ("Read", {"file_path": "/workspace/locked/a"}),  # an Edit rule says nothing about reading
        ("Bash", {"command": "ls"}),
    ]:
        assert (await check(g, tool, args, asker)).allow, (tool, args)


async def test_deny_wins_over_allow_and_bypass(tmp_path) -> None:
    asker = Asker(ev.PermissionDecision(allow=True))
    g = gate(tmp_path, "bypassPermissions", allow=["Bash"], deny=["Bash(rm:*)"])
    decision = await check(g, "Bash", {"command": "rm -rf build"}, asker)
    assert not decision.allow and "Bash(rm:*)" in decision.reason
    assert (await check(g, "Bash", {"command": "ls"}, asker)).allow


async def test_allow_always_is_persisted_to_project_settings(tmp_path) -> None:
    asker = Asker(ev.PermissionDecision(allow=True, always=True))
    g = gate(tmp_path, "default")
    assert (await check(g, "Bash", {"command": "npm test"}, asker)).allow
    assert (await check(g, "Bash", {"command": "npm test"}, asker)).allow
    assert len(asker.asked) == 1
    saved = tomllib.loads(project_settings_path(tmp_path).read_text())
    assert saved["permissions"]["allow"] == ["Bash(npm test:*)"]
    reloaded = PermissionSettings.load([project_settings_path(tmp_path)])
    assert reloaded.allow == [Rule("Bash", "npm test:*")]


def test_bad_settings_name_the_file(tmp_path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[permissions]\nallow = ["Bash(unclosed"]\n')
    with pytest.raises(SettingsError, match="settings.toml"):
        PermissionSettings.load([path])
    path.write_text("not toml ===")
    with pytest.raises(SettingsError, match="not valid TOML"):
        PermissionSettings.load([path])


def test_unknown_mode_is_refused(tmp_path) -> None:
    with pytest.raises(SettingsError, match="unknown permission mode"):
        gate(tmp_path, "yolo")
