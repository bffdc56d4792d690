"""The ``tether`` command: parses arguments and hands off, importing only what the mode needs.

``tether -p`` and ``tether sandbox serve`` never import Textual; the TUI never
waits on an import it does not need yet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from agent.embedded_host import SharedHost

USAGE = """\
tether [PROMPT]                         open the TUI, new session in this project (PROMPT sent first)
tether -c | --continue                  continue the newest session of this project
tether -r | --resume [SESSION_ID]       resume that session, or pick one
tether -p [PROMPT] [--output-format text|json|stream-json]    run headless (piped stdin is added to PROMPT)
tether sandbox serve [--listen ADDR] [--provider docker|local] [--token-file F] ...
tether sessions list | show ID | search TEXT | export ID [--format md|json] | gc
tether diff [SESSION]                   the session's changes to the project, as a unified diff
tether apply [SESSION] [--force]        write a copy workspace's changes into the project
tether rewind SESSION [--to N] [--conversation-only | --code-only]   back to before prompt N
tether resident status | start | stop [--all]   the warm processes behind `tether -p`
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the agent modes (TUI and headless)."""
    parser = argparse.ArgumentParser(
        prog="tether", usage=USAGE, description="A terminal coding agent whose hands work in a sandbox."
    )
    parser.add_argument("first_prompt", nargs="?", metavar="PROMPT", help="the first prompt (of the TUI, or of -p)")
    parser.add_argument(
        "-p", "--print", dest="prompt", metavar="PROMPT", nargs="?", const="",
        help="run headless with PROMPT ('-' or none: read it from stdin; piped stdin is appended to PROMPT)",
    )  # fmt: skip
    parser.add_argument("--output-format", choices=("text", "json", "stream-json"), default="text")
    parser.add_argument(
        "--include-partial-messages",
        action="store_true",
        help="stream-json: also write the API's stream events as they come",
    )
    parser.add_argument("--version", action=_VersionAction, help="print tether's version and exit")
    parser.add_argument(
        "-c",
        "--continue",
        dest="continue_latest",
        action="store_true",
        help="continue the newest session of this project (one with a prompt in it)",
    )
    parser.add_argument(
        "-r",
        "--resume",
        metavar="SESSION_ID",
        nargs="?",
        const="",
        default=None,
        help="resume a session (a unique id prefix is enough); without an id, pick one in a list",
    )
    parser.add_argument(
        "--sandbox",
        metavar="URL",
        default=os.environ.get("TETHER_SANDBOX", ""),
        help="sandbox hosts, comma-separated, tried in order and failed over to: grpc://host:port, "
        "grpcs://host:port, unix:///path or embedded (default: [sandbox] hosts in the settings, else embedded)",
    )
    parser.add_argument(
        "--sandbox-token", metavar="TOKEN", default="", help="bearer token for --sandbox (or TETHER_SANDBOX_TOKEN)"
    )
    parser.add_argument("--sandbox-ca", metavar="FILE", default="", help="CA certificate for a grpcs:// host")
    parser.add_argument("--recipe", metavar="NAME|FILE", default="", help="sandbox recipe (default: default)")
    parser.add_argument("--model", metavar="NAME", default="", help="model name (or TETHER_MODEL)")
    parser.add_argument("--max-turns", type=_positive_int, metavar="N", help="stop after N model turns")
    parser.add_argument(
        "--permission-mode",
        choices=("default", "acceptEdits", "plan", "bypassPermissions"),
        default="default",
        help="default asks before Bash/Write/Edit; acceptEdits asks before Bash; plan allows read-only tools; bypassPermissions asks nothing",
    )
    parser.add_argument(
        "--allowedTools",
        "--allowed-tools",
        dest="allowed_tools",
        nargs="+",
        default=[],
        metavar="RULE",
        help="allow rules, e.g. Bash 'Bash(git status:*)' 'Edit(src/**)'",
    )
    parser.add_argument(
        "--disallowedTools",
        "--disallowed-tools",
        dest="disallowed_tools",
        nargs="+",
        default=[],
        metavar="RULE",
        help="deny rules (deny wins)",
    )
    parser.add_argument(
        "--workspace",
        choices=("direct", "copy"),
        default="",
        help="direct: the sandbox works in this project directory itself (default with the embedded sandbox); "
        "copy: the project is uploaded and changes come back with `tether apply` (default with --sandbox)",
    )
    parser.add_argument("--verbose", action="store_true", help="say on stderr what tether sets up (workspace, sandbox)")
    parser.add_argument("--project", metavar="DIR", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None, *, shared_host: SharedHost | None = None) -> int:
    """Entry point of the ``tether`` console script; the resident harness's children pass the host it lends them."""
    whole_process = argv is None
    argv = sys.argv[1:] if argv is None else argv
    _quiet_grpc_core()
    if argv[:1] == ["sandbox"]:
        from remote_sandbox.cli import main as sandbox_main

        return sandbox_main(argv[1:])
    if argv[:1] == ["sessions"]:
        from session.cli import main as sessions_main

        return sessions_main(argv[1:])
    if argv[:1] in (["diff"], ["apply"], ["rewind"]):
        from tui.workspace_cli import main as workspace_main

        return workspace_main(argv[0], argv[1:])
    if argv[:1] == ["resident"]:
        from tui.resident.cli import main as resident_main

        return resident_main(argv[1:])

    args = build_parser().parse_args(argv)
    if args.resume == "" and args.prompt is None and not (sys.stdin.isatty() and sys.stdout.isatty()):
        # No id and no terminal to show the picker in: list this project's sessions instead.
        from session.cli import main as sessions_main

        print("tether: pick a session and run `tether -r ID` (a unique prefix is enough):", file=sys.stderr)
        return sessions_main(["list", "--project", str((args.project or Path.cwd()).resolve())])
    from agent.credentials import MissingCredentials, check_credentials

    try:
        check_credentials()
    except MissingCredentials as exc:
        return _early_error(args, str(exc))
    if args.prompt is not None and shared_host is None:
        from tui.resident.client import hand_over

        code = hand_over(argv, verbose=args.verbose)
        if code is not None:
            return code
    if args.prompt is not None:
        from agent.model import preload_sdk

        preload_sdk()  # the SDK's import is the long pole of a cold run: begin it before anything else
    from agent.options import HEARTBEAT_S, HarnessOptions

    options = HarnessOptions(
        project_dir=(args.project or Path.cwd()).resolve(),
        model=args.model,
        sandbox=args.sandbox,
        sandbox_token=args.sandbox_token,
        sandbox_ca_file=args.sandbox_ca,
        recipe=args.recipe,
        max_turns=args.max_turns,
        resume=args.resume or "",
        continue_latest=args.continue_latest,
        permission_mode=args.permission_mode,
        allowed_tools=_split_rules(args.allowed_tools),
        disallowed_tools=_split_rules(args.disallowed_tools),
        workspace=args.workspace,
        verbose=args.verbose,
        shared_host=shared_host,
        heartbeat_s=HEARTBEAT_S if args.prompt is None else 0.0,  # the status bar's host state and round trip
    )
    if args.prompt is not None:
        if args.prompt and args.first_prompt is not None:
            print(
                f"tether: two prompts given ({args.prompt!r} after -p and {args.first_prompt!r}); quote the prompt as one argument",
                file=sys.stderr,
            )
            return 2
        prompt = headless_prompt(args.prompt or args.first_prompt or "", sys.stdin)
        if not prompt.strip():
            came = (
                " (nothing came on stdin)"
                if args.prompt == "-"
                else ": give it after -p, or pipe it in (echo 'what is here?' | tether -p)"
            )
            return _early_error(args, "tether: the prompt is empty" + came)
        import asyncio

        from agent.headless import run_headless

        try:
            code = asyncio.run(
                run_headless(
                    options, prompt, args.output_format, include_partial_messages=args.include_partial_messages
                )
            )
        except KeyboardInterrupt:
            print("tether: interrupted", file=sys.stderr)
            code = 130
        except BrokenPipeError:
            # The reader went away (`tether -p … | head`): the answer is in the session log; say nothing more
            # on stdout (Python would report the closed pipe again at exit) and end as a SIGPIPE'd program does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 141
        if whole_process:
            _exit_now(code)
        return code

    import gc

    from tui.app import TetherApp

    gc.freeze()  # Textual's classes and the app's modules live as long as the process: no collection walks them
    # A streamed answer allocates millions of short-lived containers (segments, strips): collecting the
    # young ones every 20,000 allocations rather than every 700 spends a third of the time in the collector.
    gc.set_threshold(20_000, 20, 10)
    app = TetherApp(options, initial_prompt=args.first_prompt or "", pick_session=args.resume == "")
    app.run()
    if app.exit_session_id:
        print(f"Session {app.exit_session_id}\nResume it with: tether -r {app.exit_session_id}")
    return app.return_code or 0


def _quiet_grpc_core() -> None:
    """Keep gRPC core's own log lines (handshake failures and the like) off the user's terminal.

    They must be set before grpc is first imported; tether reports every failure in its own
    words. An explicit GRPC_VERBOSITY / GRPC_TRACE (debugging gRPC itself) is kept.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    os.environ.setdefault("GRPC_TRACE", "")
    from protos.grpc_engine import choose_io_engine

    choose_io_engine()  # the sandbox client's calls, and the embedded host's (it inherits the environment)


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _early_error(args: argparse.Namespace, message: str) -> int:
    """Report a failure before the harness starts: headless in its output format, else on stderr."""
    if args.prompt is None:
        print(message, file=sys.stderr)
        return 1
    from agent.headless import report_error

    return report_error(message, args.output_format)


def headless_prompt(text: str, stdin: TextIO) -> str:
    """The prompt of ``tether -p``: TEXT, stdin's text if TEXT is empty or ``-``, or both.

    As ``claude -p`` does, piped input is read whenever stdin is not a terminal,
    and follows a prompt given on the command line after a blank line.
    """
    from agent.text import readable_text

    # Bytes that are not UTF-8 (stdin, or argv in any locale) are replaced, never fatal.
    text = readable_text(text)
    if text == "-":
        return readable_text(stdin.buffer.read())
    if stdin.isatty():
        return text
    piped = readable_text(stdin.buffer.read())
    if not piped.strip():
        return text
    return f"{text}\n\n{piped}" if text.strip() else piped


class _VersionAction(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("tether")
        except PackageNotFoundError:
            number = "(version unknown: not installed as a package)"
        print(f"tether {number}")
        parser.exit()


def _exit_now(code: int) -> None:
    """End a finished headless run without tearing down the interpreter.

    Freeing the SDK's thousands of classes at interpreter exit takes a
    quarter of a cold run's time; the run is over (its log is fsynced, its
    sandbox and host are closed), so flush, run the exit hooks, and go.
    """
    import atexit

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1  # output the caller reads was lost (a closed pipe): say so
    atexit._run_exitfuncs()
    os._exit(code)


def _split_rules(values: list[str]) -> list[str]:
    """Rules may come as separate words or one comma/space separated string (outside parentheses)."""
    rules: list[str] = []
    for value in values:
        depth, current = 0, ""
        for ch in value:
            if ch in ", " and depth == 0:
                if current:
                    rules.append(current)
                current = ""
                continue
            depth += ch == "("
            depth -= ch == ")"
            current += ch
        if current:
            rules.append(current)
    return rules


if __name__ == "__main__":
    sys.exit(main())
