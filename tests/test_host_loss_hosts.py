"""Host lists: ``--sandbox`` with several entries and ``[sandbox] hosts``, their errors, and the first host that answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import events as ev
from agent.harness import Harness, HarnessError, HarnessOptions
from agent.hosts import EMBEDDED, HostListError, HostSpec, load_host_settings, parse_host_list
from agent.permissions import SettingsError
from agent.sandbox_client import SandboxError
from session.transcript import render_markdown
from tests.fixtures.fake_api import FakeMessagesAPI
from tests.fixtures.sandbox_host import RunningHost
from tests.fixtures.tether_cli import TetherEnv


def test_a_comma_separated_list_keeps_its_order_and_gives_every_remote_entry_the_token() -> None:
    specs = parse_host_list("grpc://a:1, grpcs://b:2 ,embedded", token="t", ca_file="/ca.pem")
    assert specs == [
        HostSpec("grpc://a:1", token="t"),
        HostSpec("grpcs://b:2", token="t", ca_file="/ca.pem"),
        HostSpec(EMBEDDED),
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("grpc://a:1,,grpc://b:2", "an empty entry"),
        ("grpc://a:1,", "an empty entry"),
        ("grpc://a:1,grpc://a:1", "listed twice"),
        ("grpc://a:1,http://b:2", "'http://b:2' is not a sandbox host address"),
        ("grpc://a:1,unix:relative", "absolute path"),
    ],
)
def test_a_bad_entry_is_named_with_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(HostListError, match=said) as caught:
        parse_host_list(text)
    assert "--sandbox" in str(caught.value)


def test_a_ca_with_no_tls_host_in_the_list_is_refused() -> None:
    with pytest.raises(HostListError, match="no entry .* is grpcs://"):
        parse_host_list("grpc://a:1,grpc://b:2,embedded", ca_file="/ca.pem")


def test_settings_hosts_take_urls_and_tables_with_files_relative_to_the_settings(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        '[sandbox]\nhosts = [{url = "grpcs://a:1", token_file = "a.token", ca = "/abs/ca.pem"}, "grpc://b:2", "embedded"]\n'
    )
    (tmp_path / "a.token").write_text("secret-a  \n")
    specs = load_host_settings([settings])
    assert specs == [
        HostSpec("grpcs://a:1", token_file=str(tmp_path / "a.token"), ca_file="/abs/ca.pem"),
        HostSpec("grpc://b:2"),
        HostSpec(EMBEDDED),
    ]
    assert specs[0].read_token() == "secret-a"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('[sandbox]\nhosts = "grpc://a:1"\n', "must be a non-empty list"),
        ("[sandbox]\nhosts = []\n", "must be a non-empty list"),
        ('[sandbox]\nhost = ["grpc://a:1"]\n', "unknown sandbox settings host"),
        ('[sandbox]\nhosts = [{url = "grpc://a:1", tokn = "x"}]\n', "entry 1: unknown keys tokn"),
        ('[sandbox]\nhosts = [{token = "x"}]\n', "entry 1: no url"),
        ('[sandbox]\nhosts = [{url = "grpc://a:1", token = "x", token_file = "f"}]\n', "not both"),
        ('[sandbox]\nhosts = [{url = "grpc://a:1", ca = "ca.pem"}]\n', "a CA is for a TLS host"),
        ('[sandbox]\nhosts = [{url = "embedded", token = "x"}]\n', "takes no token"),
        ("[sandbox]\nhosts = [7]\n", "entry 1: must be a URL string or a table"),
    ],
)
def test_bad_settings_hosts_name_the_file_and_the_entry(tmp_path: Path, body: str, said: str) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(body)
    with pytest.raises(SettingsError, match=said) as caught:
        load_host_settings([settings])
    assert str(settings) in str(caught.value)


def test_an_unreadable_token_file_is_a_sandbox_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="cannot read the token file .*missing"):
        HostSpec("grpc://a:1", token_file=str(tmp_path / "missing")).read_token()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SandboxError, match="is empty"):
        HostSpec("grpc://a:1", token_file=str(tmp_path / "empty")).read_token()


def test_a_bad_sandbox_list_on_the_command_line_is_one_clear_line(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv
) -> None:
    env = {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}
    done = tether_env.run("-p", "hi", "--sandbox", "grpc://127.0.0.1:1,,embedded", env=env)
    assert done.returncode != 0
    assert "an empty entry" in done.stderr and "Traceback" not in done.stderr, done.stderr


async def test_the_first_host_that_answers_is_used_and_the_one_that_did_not_is_named(
    fake_api: FakeMessagesAPI, tui_env: Path, local_sandbox_host: RunningHost
) -> None:
    events: list[ev.AgentEvent] = []

    async def emit(event: ev.AgentEvent) -> None:
        events.append(event)

    dead = "grpc://127.0.0.1:1"
    harness = Harness(
        HarnessOptions(
            project_dir=tui_env,
            sandbox=f"{dead},{local_sandbox_host.target}",
            sandbox_token=local_sandbox_host.token,
        ),
        emit,
    )
    try:
        await harness.start()
        assert harness.host_label == local_sandbox_host.target
        notices = [e.message for e in events if isinstance(e, ev.Status)]
        assert any(n.startswith(f"Sandbox host not used: {dead}") and "refused" in n for n in notices), notices
    finally:
        await harness.close()


async def test_no_host_of_a_list_answering_names_each_one(fake_api: FakeMessagesAPI, tui_env: Path) -> None:
    async def emit(event: ev.AgentEvent) -> None:
        pass

    harness = Harness(HarnessOptions(project_dir=tui_env, sandbox="grpc://127.0.0.1:1,grpc://127.0.0.1:2"), emit)
    try:
        with pytest.raises(SandboxError, match="no sandbox host answers: grpc://127.0.0.1:1: .*; grpc://127.0.0.1:2: "):
            await asyncio.wait_for(harness.start(), 30)
    finally:
        await harness.close()


async def test_settings_hosts_are_used_without_sandbox_flag(
    fake_api: FakeMessagesAPI, tui_env: Path, local_sandbox_host: RunningHost, tmp_path: Path
) -> None:
    from agent.permissions import user_settings_path

    path = user_settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = tmp_path / "token"
    token.write_text(local_sandbox_host.token + "\n")
    path.write_text(f'[sandbox]\nhosts = [{{url = "{local_sandbox_host.target}", token_file = "{token}"}}]\n')

    async def emit(event: ev.AgentEvent) -> None:
        pass

    harness = Harness(HarnessOptions(project_dir=tui_env), emit)
    try:
        await harness.start()
        assert harness.host_label == local_sandbox_host.target
        assert harness.workspace is not None and harness.workspace.mode == "copy"
    finally:
        await harness.close()


def test_bad_settings_hosts_stop_the_start_with_the_reason(tui_env: Path) -> None:
    from agent.permissions import user_settings_path

    path = user_settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[sandbox]\nhosts = []\n")

    async def emit(event: ev.AgentEvent) -> None:
        pass

    harness = Harness(HarnessOptions(project_dir=tui_env), emit)
    with pytest.raises(HarnessError, match="sandbox.hosts must be a non-empty list"):
        asyncio.run(harness.start())


def test_host_changes_show_in_the_transcript() -> None:
    from session.events import Event

    event = Event(
        "u1",
        None,
        "s",
        "2026-01-01T00:00:00.000Z",
        "host",
        {"event": "failed over", "host": "grpc://b:2", "previous": "grpc://a:1", "reason": "ping timeout"},
    )
    assert render_markdown([event]) == "*Sandbox host failed over from grpc://a:1 to grpc://b:2 (ping timeout)*\n"
