"""The workspace as users meet it: the project in the sandbox, checkpoints, restore, diff, apply, rewind.

Real parts throughout: the harness (in-process, or the ``tether`` command as a
subprocess), real sandbox hosts over gRPC (the embedded one, an in-process one,
or the docker provider), the real ``anthropic`` SDK against the fake Messages API.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent import events as ev
from agent.harness import Harness, HarnessOptions
from session.store import SessionStore
from tests.fixtures.event_recorder import Recorder
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text, tool_use
from tests.fixtures.sandbox_host import RunningHost
from tests.fixtures.tether_cli import TETHER, TetherEnv

WAIT_S = 30.0
"""Bound on every wait here."""


async def started(options: HarnessOptions) -> tuple[Harness, Recorder]:
    """A started harness and its event recorder."""
    recorder = Recorder(wait_s=WAIT_S)
    harness = Harness(options, recorder)
    await harness.start()
    return harness, recorder


def bash(command: str) -> Any:
    """A model turn that runs ``command``."""
    return reply(tool_use("Bash", {"command": command}))


def write_project(project: Path) -> None:
    """A small project: sources, an executable script, a symlink, an ignored dependency dir."""
    (project / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (project / "main.py").write_text("from calc import add\nprint(add(1, 2))\n")
    (project / "run.sh").write_text("#!/bin/sh\necho run\n")
    (project / "run.sh").chmod(0o755)
    (project / "link").symlink_to("calc.py")
    (project / "node_modules" / "dep").mkdir(parents=True)
    (project / "node_modules" / "dep" / "index.js").write_text("x\n")


# ----------------------------------------------------------------------------- copy mode, lost sandbox


async def test_copy_workspace_survives_its_sandbox_being_destroyed(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    write_project(tui_env)
    harness, recorder = await started(
        HarnessOptions(project_dir=tui_env, workspace="copy", permission_mode="bypassPermissions")
    )
    try:
        fake_api.script(
            bash("stat -c 'mtime %Y' calc.py; ls -a; cat calc.py; test -x run.sh && echo exec-ok; readlink link"),
            bash(
                "mkdir -p made && printf 'new\\n' > made/new.txt && chmod 600 made/new.txt && ln -s made/new.txt made/ln"
            ),
            reply(text("done")),
        )
        await harness.run("look and make")
        first = recorder.results()[0].content
        assert (
            "calc.py" in first
            and "return a + b" in first
            and "exec-ok" in first
            and "calc.py" in first.splitlines()[-1]
        )
        assert "node_modules" not in first, "a dependency dir was uploaded"
        assert f"mtime {int((tui_env / 'calc.py').stat().st_mtime)}" in first, "the upload lost the file's mtime"
        assert harness.lease is not None and harness.client is not None
        lost = harness.lease.sandbox_id
        # As the host's TTL reaper would: the sandbox goes while the session sits idle.
        await harness.client.destroy(lost)

        check = "cat made/new.txt; stat -c %a made/new.txt; readlink made/ln; cat calc.py"
        fake_api.script(bash(check), bash(check), reply(text("ok")))
        await harness.run("check")
        lost_result, after = recorder.results()[-2:]
        assert lost_result.is_error and "lost" in lost_result.content and "checkpoint" in lost_result.content
        assert not after.is_error, after.content
        assert after.content.splitlines()[:3] == ["new", "600", "made/new.txt"]
        assert "return a + b" in after.content
        assert harness.lease.sandbox_id != lost
        lost_notices = [n for n in recorder.notices() if n.startswith("Sandbox lost")]
        assert len(lost_notices) == 1 and "restored checkpoint" in lost_notices[0], recorder.notices()
    finally:
        await harness.close()


# ----------------------------------------------------------------------------- docker: killed 20 times


@pytest.mark.docker
async def test_docker_container_killed_twenty_times_loses_no_completed_work(
    fake_api: FakeMessagesAPI, tui_env: Path, docker_sandbox_host: RunningHost, docker_engine
) -> None:
    (tui_env / "seed.txt").write_text("seed\n")
    harness, recorder = await started(
        HarnessOptions(
            project_dir=tui_env,
            sandbox=docker_sandbox_host.target,
            sandbox_token=docker_sandbox_host.token,
            permission_mode="bypassPermissions",
        )
    )
    assert harness.workspace is not None and harness.workspace.mode == "copy"
    try:
        for round_ in range(20):
            fake_api.script(
                bash(f"echo r{round_} > f{round_}.txt && chmod 6{round_ % 8}0 f{round_}.txt"),
                bash("echo long-started; sleep 60"),
                bash("for f in f*.txt; do printf '%s %s ' $f $(stat -c %a $f); cat $f; done; cat seed.txt"),
                reply(text("next")),
            )
            run = asyncio.ensure_future(harness.run(f"round {round_}"))
            await recorder.wait_for(lambda e: isinstance(e, ev.ToolOutput) and "long-started" in e.text)
            sandbox_id = harness.lease.sandbox_id
            for container in docker_engine.containers.list(filters={"label": f"tether.sandbox={sandbox_id}"}):
                container.kill()
            await asyncio.wait_for(run, WAIT_S * 2)
            made, killed, listing = recorder.results()[-3:]
            assert not made.is_error, made.content
            assert killed.is_error and "lost" in killed.content, killed.content
            assert not listing.is_error, listing.content
            for earlier in range(round_ + 1):
                assert f"f{earlier}.txt 6{earlier % 8}0 r{earlier}" in listing.content, listing.content
            assert "seed" in listing.content
            assert harness.lease.sandbox_id != sandbox_id
    finally:
        await harness.close()
    left = docker_engine.containers.list(all=True, filters={"label": f"tether.sandbox={harness.lease.sandbox_id}"})
    assert left == []


# ----------------------------------------------------------------------------- resume


def tool_results(stream_json: str) -> list[dict]:
    """The tool_result blocks of a stream-json run's ``user`` lines, in order."""
    lines = [json.loads(line) for line in stream_json.splitlines()]
    return [block for line in lines if line["type"] == "user" for block in line["message"]["content"]]


def test_resume_after_the_sandbox_is_gone_sees_the_last_checkpoint(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    (tether_env.project / "keep.txt").write_text("kept\n")
    fake_api.script(
        bash("echo made-in-first-run > made.txt && rm keep.txt && mkdir -p sub && echo s > sub/s.txt && cd sub"),
        reply(text("done")),
    )
    first = tether_env.run("-p", "make", "--workspace", "copy", "--permission-mode", "bypassPermissions", env=env)
    assert first.returncode == 0, first.stderr
    session_id = tether_env.session_events()[0]["session_id"]
    # The first run's sandbox went with its process; the resumed run gets a new one.
    fake_api.script(bash("pwd; ls ..; cat ../made.txt"), reply(text("seen")))
    second = tether_env.run(
        "-r",
        session_id,
        "-p",
        "look",
        "--output-format",
        "stream-json",
        "--permission-mode",
        "bypassPermissions",
        env=env,
    )
    assert second.returncode == 0, second.stderr
    finished = tool_results(second.stdout)
    output = finished[0]["content"]
    assert output.splitlines()[0] == "/workspace/sub", "the shell did not go back to its directory"
    assert "made-in-first-run" in output and "keep.txt" not in output
    assert (tether_env.project / "keep.txt").exists(), "copy mode touched the local project"
    assert not (tether_env.project / "made.txt").exists()


# ----------------------------------------------------------------------------- direct mode


def test_direct_workspace_edits_the_real_files_and_nothing_else_is_reachable(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-secret-key-value"}
    write_project(tether_env.project)
    ssh = Path(tether_env.env["HOME"]) / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("PRIVATE KEY\n")
    calc = tether_env.project / "calc.py"
    fake_api.script(
        reply(tool_use("Read", {"file_path": "calc.py"})),
        reply(tool_use("Edit", {"file_path": "calc.py", "old_string": "a + b", "new_string": "a + b + 0"})),
        bash(
            f"cat {ssh / 'id_rsa'} 2>&1; ls {tether_env.home} 2>&1; env | grep -c sk-secret; "
            f"cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n' | grep -c ANTHROPIC; echo end"
        ),
        reply(text("edited")),
    )
    proc = tether_env.run(
        "-p", "edit", "--output-format", "stream-json", "--permission-mode", "bypassPermissions", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert calc.read_text() == "def add(a, b):\n    return a + b + 0\n"
    finished = tool_results(proc.stdout)
    probe = finished[-1]["content"]
    assert "PRIVATE KEY" not in probe and "No such file" in probe
    assert "sk-secret" not in probe and probe.strip().splitlines()[-3:] == ["0", "0", "end"], probe
    events = tether_env.session_events()
    workspace = next(e for e in events if e["type"] == "workspace")["payload"]
    assert workspace["mode"] == "direct"
    # tether diff shows the edit against the session's first checkpoint.
    diff = tether_env.run("diff", env=env)
    assert diff.returncode == 0, diff.stderr
    assert "diff --git a/calc.py b/calc.py" in diff.stdout and "+    return a + b + 0" in diff.stdout


# ----------------------------------------------------------------------------- copy mode in git: diff and apply


def git(project: Path, *args: str) -> str:
    """Run git in ``project``."""
    return subprocess.run(
        ["git", "-C", str(project), *args],
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    ).stdout


def test_copy_workspace_in_git_diff_and_apply(fake_api: FakeMessagesAPI, tether_env: TetherEnv) -> None:
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    project = tether_env.project
    write_project(project)
    (project / ".gitignore").write_text("node_modules/\n*.log\n")
    (project / "debug.log").write_text("noise\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "start")
    fake_api.script(
        bash("git status --porcelain; echo status-end; ls debug.log 2>&1"),
        reply(tool_use("Read", {"file_path": "calc.py"})),
        reply(tool_use("Edit", {"file_path": "calc.py", "old_string": "a + b", "new_string": "b + a"})),
        bash("echo changed > main.py && echo brand-new > added.txt && rm run.sh"),
        reply(text("done")),
    )
    proc = tether_env.run(
        "-p",
        "go",
        "--workspace",
        "copy",
        "--output-format",
        "stream-json",
        "--permission-mode",
        "bypassPermissions",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    finished = tool_results(proc.stdout)
    status = finished[0]["content"]
    assert status.split("status-end")[0].strip() == "", f"git status in the sandbox is not clean: {status}"
    assert "No such file" in status, "an ignored file was uploaded"
    assert "b + a" not in (project / "calc.py").read_text(), "copy mode changed the local project"

    diff = tether_env.run("diff", env=env)
    assert diff.returncode == 0, diff.stderr
    assert "-    return a + b\n+    return b + a\n" in diff.stdout
    assert "new file mode 100644" in diff.stdout and "+brand-new" in diff.stdout
    assert "deleted file mode 100755" in diff.stdout

    # Meanwhile the user changes main.py locally: apply must refuse that one file, by name.
    (project / "main.py").write_text("local edit\n")
    applied = tether_env.run("apply", env=env)
    assert applied.returncode == 1
    assert "refused main.py" in applied.stdout
    assert (project / "calc.py").read_text() == "def add(a, b):\n    return b + a\n"
    assert (project / "added.txt").read_text() == "brand-new\n"
    assert not (project / "run.sh").exists()
    assert (project / "main.py").read_text() == "local edit\n"
    forced = tether_env.run("apply", "--force", env=env)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (project / "main.py").read_text() == "changed\n"
    # Everything is applied now: the diff against the project is empty.
    assert tether_env.run("diff", env=env).stdout == ""


# ----------------------------------------------------------------------------- rewind


def test_rewind_three_prompts_back_restores_files_and_conversation(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    project = tether_env.project
    (project / "shared.txt").write_text("v0\n")
    session_id = ""
    for n in range(1, 5):
        fake_api.script(bash(f"echo v{n} > shared.txt && echo {n} > p{n}.txt"), reply(text(f"answer {n}")))
        args = ["-p", f"prompt {n}", "--permission-mode", "bypassPermissions"]
        if session_id:
            args = ["-r", session_id, *args]
        proc = tether_env.run(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        session_id = session_id or tether_env.session_events()[0]["session_id"]
    assert (project / "shared.txt").read_text() == "v4\n"
    listing = tether_env.run("rewind", session_id, env=env)
    assert [line.split()[-2:] for line in listing.stdout.splitlines()] == [["prompt", str(n)] for n in range(1, 5)]

    rewound = tether_env.run("rewind", session_id, "--to", "2", "--yes", env=env)
    assert rewound.returncode == 0, rewound.stderr
    assert (project / "shared.txt").read_text() == "v1\n"
    assert sorted(p.name for p in project.glob("p*.txt")) == ["p1.txt"]
    store = SessionStore(home=tether_env.home)
    try:
        messages = store.open(session_id).conversation()
    finally:
        store.close()
    said = json.dumps(messages)
    assert "prompt 1" in said and "answer 1" in said
    assert "prompt 2" not in said and "answer 4" not in said
    # The next prompt goes on from there, and its checkpoint state follows the new branch.
    fake_api.script(bash("cat shared.txt; ls p*.txt"), reply(text("after")))
    proc = tether_env.run(
        "-r",
        session_id,
        "-p",
        "again",
        "--output-format",
        "stream-json",
        "--permission-mode",
        "bypassPermissions",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    request = fake_api.message_requests[-1].body
    assert "prompt 4" not in json.dumps(request["messages"])
    assert "v1" in proc.stdout and "p1.txt" in proc.stdout and "p4.txt" not in proc.stdout


def test_direct_mode_refuses_the_home_directory(fake_api: FakeMessagesAPI, tether_env: TetherEnv) -> None:
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    home = Path(tether_env.env["HOME"])
    proc = subprocess.run(
        [*TETHER, "-p", "hi"],
        cwd=home,
        env={**tether_env.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "will not mount" in proc.stderr and "home directory" in proc.stderr and "--workspace copy" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tether_env.session_files() == [], "a refused start left a session behind"


async def test_odd_names_symlinks_and_special_files_across_a_lost_sandbox(
    fake_api: FakeMessagesAPI, tui_env: Path
) -> None:
    harness, recorder = await started(
        HarnessOptions(project_dir=tui_env, workspace="copy", permission_mode="bypassPermissions")
    )
    try:
        fake_api.script(
            bash(
                "printf 'latin1\\n' > \"$(printf 'caf\\351.txt')\" && ln -s /etc/passwd out-link && "
                "ln -s 'caf\\303\\251' dangling && mkfifo pipe && printf 'x' > 'sp ace.txt' && chmod 700 'sp ace.txt'"
            ),
            reply(text("made")),
        )
        await harness.run("make odd things")
        assert any("pipe (fifo)" in notice for notice in recorder.notices()), recorder.notices()
        await harness.client.destroy(harness.lease.sandbox_id)
        check = "ls | od -c | head -5; readlink out-link; readlink dangling; stat -c '%a %n' 'sp ace.txt'; ls pipe 2>&1; cat caf*.txt"
        fake_api.script(bash(check), bash(check), reply(text("ok")))
        await harness.run("check")
        after = recorder.results()[-1]
        assert not after.is_error, after.content
        assert "3 5 1" in after.content or "351" in after.content, after.content  # the byte 0xE9, not a replacement
        assert "/etc/passwd" in after.content and "700 sp ace.txt" in after.content
        assert "No such file" in after.content and "latin1" in after.content
    finally:
        await harness.close()


async def test_a_blob_missing_from_the_store_is_named_when_restoring(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    (tui_env / "a.txt").write_text("a\n")
    (tui_env / "b.txt").write_text("b\n")
    harness, recorder = await started(
        HarnessOptions(project_dir=tui_env, workspace="copy", permission_mode="bypassPermissions")
    )
    try:
        state = harness.workspace.checkpointer.state
        harness.log.blobs.path_for(state["b.txt"].sha256).unlink()
        await harness.client.destroy(harness.lease.sandbox_id)
        fake_api.script(bash("cat a.txt b.txt"), bash("cat a.txt b.txt"), reply(text("ok")))
        await harness.run("look")
        assert any("could not bring back 1 file" in n and "b.txt" in n for n in recorder.notices()), recorder.notices()
        last = recorder.results()[-1].content
        assert "a" in last.splitlines() and "No such file" in last
    finally:
        await harness.close()


def test_apply_to_a_project_that_is_gone_or_read_only(fake_api: FakeMessagesAPI, tether_env: TetherEnv) -> None:
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    project = tether_env.project
    (project / "sub").mkdir()
    (project / "sub" / "x.txt").write_text("old\n")
    (project / "y.txt").write_text("old\n")
    fake_api.script(bash("echo new > sub/x.txt && echo new > y.txt"), reply(text("done")))
    proc = tether_env.run("-p", "go", "--workspace", "copy", "--permission-mode", "bypassPermissions", env=env)
    assert proc.returncode == 0, proc.stderr
    session_id = tether_env.session_events()[0]["session_id"]
    (project / "sub").chmod(0o555)
    try:
        if os.geteuid() != 0:  # root writes through a read-only directory; the refusal is for users
            applied = tether_env.run("apply", session_id, env=env)
            assert applied.returncode == 1 and "refused sub/x.txt" in applied.stdout
    finally:
        (project / "sub").chmod(0o755)
    moved = project.with_name("moved")
    project.rename(moved)
    gone = subprocess.run(
        [*TETHER, "apply", session_id],
        cwd=moved,
        env={**tether_env.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 1
    assert "does not exist any more; nothing was written" in gone.stderr and "Traceback" not in gone.stderr
    assert (moved / "y.txt").read_text() == "old\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_checkpoint_on_a_full_disk_is_a_notice_and_the_session_goes_on(
    fake_api: FakeMessagesAPI, tui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = tmp_path / "small-home"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("TETHER_HOME", str(small))
        (tui_env / "a.txt").write_text("a\n")
        harness, recorder = await started(
            HarnessOptions(project_dir=tui_env, workspace="copy", permission_mode="bypassPermissions")
        )
        try:
            fake_api.script(bash("head -c 3000000 /dev/urandom > big.bin && echo small > s.txt"), reply(text("made")))
            done = await harness.run("make a big file")
            assert not done.is_error and done.result == "made"
            assert any(n.startswith("Checkpoint not saved") for n in recorder.notices()), recorder.notices()
            assert not [p for p in small.rglob("*") if p.name.startswith(".tmp")], "a half-written blob was left"
            fake_api.script(bash("rm big.bin"), reply(text("removed")))
            assert (await harness.run("remove it")).result == "removed"
            # The next checkpoint caught up: s.txt is in, big.bin never made it.
            assert (
                "s.txt" in harness.workspace.checkpointer.state
                and "big.bin" not in harness.workspace.checkpointer.state
            )
            reloaded = SessionStore(home=small)
            try:
                assert reloaded.open(harness.session_id).conversation()[-1]["content"][0]["text"] == "removed"
            finally:
                reloaded.close()
        finally:
            await harness.close()
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=True)
