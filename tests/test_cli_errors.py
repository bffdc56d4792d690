"""Every mistake a new user can make at the command line ends in one clear message, never a traceback."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.sandbox_client import HostUnreachable, SandboxClient, SandboxError
from remote_sandbox.server import HostConfig, SandboxHost
from session.events import EventType
from session.store import SessionStore
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text
from tests.fixtures.tether_cli import TETHER, TetherEnv

FAST_S = 3.0
"""A mistake that cannot fix itself must be reported well within the 10 s connect wait."""

GRPC_CORE_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ", re.MULTILINE)
"""The prefix of gRPC core's own log lines (``I1203 07:36:44.17 ... Handshake failed``)."""


@pytest.fixture
def api_env(fake_api: FakeMessagesAPI) -> dict[str, str]:
    """The environment that points tether at the fake API."""
    return {"ANTHROPIC_BASE_URL": fake_api.base_url, "ANTHROPIC_API_KEY": "sk-test"}


def error_result(proc: subprocess.CompletedProcess[str]) -> dict:
    """The one JSON result a failed ``--output-format json`` run prints, checked for shape."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert result["type"] == "result" and result["is_error"] is True
    return result


# ----- sessions


def test_resuming_a_session_that_does_not_exist_is_a_json_error(tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    proc = tether_env.run("-r", "nonexistent", "-p", "hi", "--output-format", "json", env=api_env)
    assert "no session matches 'nonexistent'" in error_result(proc)["result"]
    text_run = tether_env.run("-r", "0123abcd", "-p", "hi", env=api_env)
    assert text_run.returncode == 1 and "Traceback" not in text_run.stderr
    assert "no session matches '0123abcd'" in text_run.stderr
    assert tether_env.session_files() == []


def test_resuming_an_ambiguous_prefix_lists_the_candidates(tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    store = SessionStore(tether_env.home)
    made: dict[str, list[str]] = {}
    while not any(len(ids) > 1 for ids in made.values()):  # 17 sessions at most: two share a first digit
        log = store.create(tether_env.project)
        log.close()
        made.setdefault(log.session_id[0], []).append(log.session_id)
    prefix, ids = next((p, i) for p, i in made.items() if len(i) > 1)
    result = error_result(tether_env.run("-r", prefix, "-p", "hi", "--output-format", "json", env=api_env))
    assert f"prefix {prefix!r} matches" in result["result"] and ids[0] in result["result"]


def test_a_corrupted_session_file_resumes_what_can_be_read(
    tether_env: TetherEnv, api_env: dict[str, str], fake_api: FakeMessagesAPI
) -> None:
    log = SessionStore(tether_env.home).create(tether_env.project)
    log.append(EventType.USER, {"content": "first prompt"})
    log.close()
    with log.path.open("ab") as handle:
        handle.write(b"\x00\xff{not json at all\n")
    fake_api.script(reply(text("Still here.")))
    proc = tether_env.run("-r", log.session_id, "-p", "again", env=api_env)
    assert proc.returncode == 0, proc.stderr
    assert "Still here." in proc.stdout


# ----- prompts


def test_a_prompt_with_undecodable_bytes_is_replaced_not_fatal(
    tether_env: TetherEnv, api_env: dict[str, str], fake_api: FakeMessagesAPI
) -> None:
    fake_api.script(reply(text("Got it.")), reply(text("Got that too.")))
    # Python hands argv bytes that are not UTF-8 to tether as surrogate escapes; subprocess turns them back.
    proc = tether_env.run("-p", "hello\x01\udcc3(", env=api_env)
    assert proc.returncode == 0, proc.stderr
    piped = subprocess.run(
        [*TETHER, "-p", "-"],
        cwd=tether_env.project,
        env={**tether_env.env, **api_env, "LC_ALL": "C.UTF-8"},
        input=b"from stdin \xff\xfe end",
        check=False,
        capture_output=True,
        timeout=90,
    )
    assert piped.returncode == 0, piped.stderr.decode(errors="replace")
    prompts = [block["text"] for request in fake_api.requests for block in request.body["messages"][0]["content"]]
    assert prompts == ["hello\x01\ufffd(", "from stdin \ufffd\ufffd end"]


def test_an_empty_prompt_on_stdin_is_a_json_error(tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    result = error_result(tether_env.run("-p", "-", "--output-format", "json", input="  \n", env=api_env))
    assert result["result"] == "tether: the prompt is empty (nothing came on stdin)"


@pytest.mark.parametrize("value", ["-1", "0", "many"])
def test_max_turns_must_be_a_positive_number(tether_env: TetherEnv, api_env: dict[str, str], value: str) -> None:
    proc = tether_env.run("-p", "hi", "--max-turns", value, env=api_env)
    assert proc.returncode == 2 and "--max-turns" in proc.stderr, proc.stderr
    assert tether_env.session_files() == []


# ----- settings


def _break_settings(path: Path, how: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "directory":
        path.mkdir()
    elif how == "symlink loop":
        path.symlink_to(path.name)
    elif how == "not UTF-8":
        path.write_bytes(b'[permissions]\nallow = ["\xff"]\n')
    else:
        path.write_text("[permissions\n")


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("directory", "is a directory"),
        ("symlink loop", "Too many levels of symbolic links"),
        ("not UTF-8", "not UTF-8 text (byte 0xff on line 2)"),
        ("invalid TOML", "not valid TOML"),
    ],
)
def test_an_unreadable_settings_file_is_named_in_the_error(
    tether_env: TetherEnv, api_env: dict[str, str], how: str, says: str
) -> None:
    settings = tether_env.project / ".tether" / "settings.toml"
    _break_settings(settings, how)
    result = error_result(tether_env.run("-p", "hi", "--output-format", "json", env=api_env))
    assert str(settings) in result["result"] and says in result["result"]
    assert tether_env.session_files() == [], "a run that failed before its first message leaves no session"


# ----- sandbox set-up


def test_a_failed_setup_leaves_no_session_and_no_dangling_colon(tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    recipe = tether_env.project / "broken.toml"
    recipe.write_text('name = "broken"\nsetup = ["exit 3"]\n')
    proc = tether_env.run("-p", "hi", "--recipe", str(recipe), env=api_env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "setup command 'exit 3' exited with code 3 (no output)" in proc.stderr
    assert not proc.stderr.rstrip().endswith(":")
    assert tether_env.session_files() == []


def test_sandbox_ca_without_tls_is_refused(tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    ca = tether_env.project / "ca.pem"
    ca.write_text("unused")
    proc = tether_env.run("-p", "hi", "--sandbox", "grpc://127.0.0.1:1", "--sandbox-ca", str(ca), env=api_env)
    assert proc.returncode == 1
    assert "--sandbox-ca is for a TLS host" in proc.stderr and "grpcs://127.0.0.1:1" in proc.stderr


@pytest.mark.parametrize("url", ["grpc://", "grpcs://:7443"])
def test_a_sandbox_url_without_a_host_is_refused(tether_env: TetherEnv, api_env: dict[str, str], url: str) -> None:
    proc = tether_env.run("-p", "hi", "--sandbox", url, env=api_env)
    assert proc.returncode == 1 and "it names no host" in proc.stderr, proc.stderr


def test_a_dead_host_is_named_once_and_plainly(tether_env: TetherEnv, api_env: dict[str, str]) -> None:
    started = time.monotonic()
    proc = tether_env.run("-p", "hi", "--sandbox", "grpc://127.0.0.1:1", "--sandbox-token", "x" * 32, env=api_env)
    assert time.monotonic() - started < 10, "a refused connection cannot change its mind: no 10 s wait"
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == "tether: the sandbox host at grpc://127.0.0.1:1 refused the connection (is it running?)"
    )


# ----- TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A host certificate for localhost, an unrelated CA, and a file that is not PEM."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")
    folder = tmp_path_factory.mktemp("tls")
    made = {}
    for name, subject in (("host", "/CN=localhost"), ("other", "/CN=someone-else")):
        cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", subject,
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        made[name], made[f"{name}-key"] = cert, key
    made["not-pem"] = folder / "not-pem.pem"
    made["not-pem"].write_text("this is not a certificate\n")
    return made


async def _started(tmp_path: Path, name: str, **tls: Path) -> tuple[SandboxHost, str]:
    host = SandboxHost(HostConfig(listen="127.0.0.1:0", tokens={"t" * 32: "t"}, state_dir=tmp_path / name, **tls))
    return host, (await host.start()).rsplit(":", 1)[1]


async def _failure(target: str, ca: Path | None = None) -> str:
    """The error wait_ready raises for target, checked to come fast."""
    started = time.monotonic()
    async with SandboxClient(target, "t" * 32, ca_file=str(ca) if ca else None) as client:
        with pytest.raises(SandboxError) as failed:
            await client.wait_ready(timeout=10.0)
    assert time.monotonic() - started < FAST_S, f"{target}: {failed.value}"
    return str(failed.value)


async def test_tls_mistakes_name_tls_and_the_cause_at_once(tmp_path: Path, certificates: dict[str, Path]) -> None:
    tls_host, tls_port = await _started(
        tmp_path, "tls", tls_cert=certificates["host"], tls_key=certificates["host-key"]
    )
    plain_host, plain_port = await _started(tmp_path, "plain")
    try:
        async with SandboxClient(f"grpcs://localhost:{tls_port}", "t" * 32, ca_file=str(certificates["host"])) as good:
            await good.wait_ready(timeout=10.0)

        wrong_ca = await _failure(f"grpcs://localhost:{tls_port}", certificates["other"])
        assert (
            wrong_ca.startswith("TLS with the sandbox host")
            and f"not signed by the CA in {certificates['other']}" in wrong_ca
        )
        no_ca = await _failure(f"grpcs://localhost:{tls_port}")
        assert no_ca.startswith("TLS with the sandbox host") and "--sandbox-ca" in no_ca
        not_pem = await _failure(f"grpcs://localhost:{tls_port}", certificates["not-pem"])
        assert f"the CA file {certificates['not-pem']} is not usable" in not_pem and "PEM" in not_pem
        plain_to_tls = await _failure(f"grpc://localhost:{tls_port}")
        assert "speaks TLS" in plain_to_tls and f"use grpcs://localhost:{tls_port}" in plain_to_tls
        tls_to_plain = await _failure(f"grpcs://127.0.0.1:{plain_port}", certificates["host"])
        assert "does not speak TLS" in tls_to_plain and f"grpc://127.0.0.1:{plain_port}" in tls_to_plain
    finally:
        await tls_host.stop()
        await plain_host.stop()


async def test_a_host_that_died_is_reported_once_without_grpc_words(tmp_path: Path) -> None:
    host, port = await _started(tmp_path, "dying")
    async with SandboxClient(f"grpc://127.0.0.1:{port}", "t" * 32) as client:
        await client.wait_ready(timeout=10.0)
        await host.stop()
        with pytest.raises(HostUnreachable) as failed:
            await client.list()
    message = str(failed.value)
    assert message == f"the sandbox host at grpc://127.0.0.1:{port} refused the connection (is it running?)"


def test_grpc_core_log_lines_never_reach_the_terminal(
    tether_env: TetherEnv, api_env: dict[str, str], certificates: dict[str, Path], tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    token_file = tmp_path / "tokens.txt"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    host = subprocess.Popen(
        [*TETHER, "sandbox", "serve", "--provider", "local", "--listen", "127.0.0.1:0", "--token-file", str(token_file),
         "--state-dir", str(tmp_path / "host"), "--tls-cert", str(certificates["host"]), "--tls-key", str(certificates["host-key"])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=tether_env.env, text=True,
    )  # fmt: skip
    try:
        line = host.stdout.readline()
        assert "listening on" in line, line
        port = line.rsplit(":", 1)[1].strip()
        proc = tether_env.run(
            "-p", "hi", "--sandbox", f"grpcs://localhost:{port}", "--sandbox-token", token, env=api_env
        )
    finally:
        host.terminate()
        host.wait(timeout=15)
    assert proc.returncode == 1
    assert not GRPC_CORE_LOG.search(proc.stderr), proc.stderr
    assert proc.stderr.startswith("tether: TLS with the sandbox host"), proc.stderr


# ----- export


def test_json_export_after_compaction_carries_the_whole_history(tether_env: TetherEnv) -> None:
    log = SessionStore(tether_env.home).create(tether_env.project)
    log.append(EventType.USER, {"content": "the first prompt"})
    log.append(
        EventType.ASSISTANT,
        {"message": {"role": "assistant", "content": [{"type": "text", "text": "the first answer"}]}},
    )
    log.append(EventType.COMPACTION, {"summary": "we talked about an opening question"})
    log.append(EventType.USER, {"content": "the second prompt"})
    log.append(
        EventType.ASSISTANT,
        {"message": {"role": "assistant", "content": [{"type": "text", "text": "the second answer"}]}},
    )
    log.close()
    proc = tether_env.run("sessions", "export", log.session_id, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    everything = json.dumps(document["messages"])
    for said in ("the first prompt", "the first answer", "we talked about", "the second prompt", "the second answer"):
        assert said in everything
    assert [m["role"] for m in document["messages"]] == ["user", "assistant", "user", "assistant"]
    context = json.dumps(document["context"])
    assert "the first prompt" not in context and "we talked about" in context and "the second answer" in context


def test_a_reader_that_goes_away_ends_the_run_quietly_and_the_answer_is_kept(
    fake_api: FakeMessagesAPI, tether_env: TetherEnv, api_env: dict[str, str]
) -> None:
    # `tether -p … | head -c 10`: the pipe closes long before a 200 kB answer is printed.
    fake_api.script(reply(text("x" * 200_000 + " end of the answer")))
    command = " ".join([*TETHER, "-p", "'long answer please'"])
    proc = subprocess.run(
        ["sh", "-c", f"{command} | head -c 10 >/dev/null"],
        cwd=tether_env.project,
        env={**tether_env.env, **api_env},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    answers = [e for e in tether_env.session_events() if e["type"] == EventType.ASSISTANT]
    assert answers and "end of the answer" in json.dumps(answers[-1]["payload"])
