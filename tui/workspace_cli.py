"""``tether diff``, ``tether apply`` and ``tether rewind``: a session's workspace, from the store alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.workspace.changes import (
    REWIND_CHOICES,
    ApplyReport,
    WorkspaceChangeError,
    apply_to_project,
    base_state,
    current_state,
    plan_rewind,
    prompts,
    record_rewind,
    unified_diff,
    write_local,
)
from agent.workspace.session import workspace_of
from session.errors import SessionStoreError
from session.log import SessionLog
from session.store import SessionStore


def main(command: str, argv: list[str]) -> int:
    """Run ``tether COMMAND ARGV`` for COMMAND in diff, apply, rewind; return the exit code."""
    parser = argparse.ArgumentParser(prog=f"tether {command}")
    parser.add_argument(
        "session", nargs="?", default="", help="session id or unique prefix (default: the newest of this project)"
    )
    parser.add_argument("--project", type=Path, default=None, help=argparse.SUPPRESS)
    if command == "apply":
        parser.add_argument("--force", action="store_true", help="overwrite files changed locally since the upload")
    if command == "rewind":
        parser.add_argument(
            "--to", type=int, metavar="N", help="rewind to just before prompt N (without it: list the prompts)"
        )
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--conversation-only", action="store_true", help="rewind the conversation, keep the files")
        which.add_argument("--code-only", action="store_true", help="rewind the files, keep the conversation")
        parser.add_argument("--yes", action="store_true", help="do not ask before changing files")
    args = parser.parse_args(argv)
    store = SessionStore()
    try:
        log = _session(store, args.session, (args.project or Path.cwd()).resolve())
        if command == "diff":
            base, _ = base_state(log)
            sys.stdout.write(unified_diff(log, base, current_state(log)))
            return 0
        workspace = workspace_of(log) or {}
        project = Path(workspace.get("project_dir") or log.project_dir)
        if command == "apply":
            if workspace.get("mode") == "direct":
                print(
                    "tether: nothing to apply: this session's workspace is the project directory itself",
                    file=sys.stderr,
                )
                return 0
            report = apply_to_project(log, project, force=args.force)
            print(report.summary())
            return 1 if report.refused else 0
        return _rewind(log, project, workspace.get("mode", "copy"), args)
    except (WorkspaceChangeError, SessionStoreError) as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _session(store: SessionStore, session: str, project: Path) -> SessionLog:
    if session:
        return store.open(session)
    log = store.latest(project)
    if log is None:
        raise WorkspaceChangeError(f"no session in {project}; name one (tether sessions list --all)")
    return log


def _rewind(log: SessionLog, project: Path, mode: str, args: argparse.Namespace) -> int:
    if args.to is None:
        for prompt in prompts(log):
            print(f"{prompt.number:4}  {prompt.event.timestamp[:19]}  {prompt.text}")
        return 0
    choice = "conversation" if args.conversation_only else "code" if args.code_only else "both"
    assert choice in REWIND_CHOICES
    plan = plan_rewind(log, args.to, choice)
    changed = sorted(set(plan.changes.set) | set(plan.changes.removed))
    if changed and mode == "direct":
        print(
            f"Rewinding to before prompt {plan.prompt.number} ({plan.prompt.text!r}) changes these files in {project}:"
        )
        for path in changed:
            print(f"  {'delete' if path in plan.changes.removed else 'restore'} {path}")
        if not args.yes:
            if not sys.stdin.isatty():
                print("tether: pass --yes to change these files without being asked", file=sys.stderr)
                return 1
            if input("Go on? [y/N] ").strip().lower() not in ("y", "yes"):
                print("Nothing changed.")
                return 1
        report = ApplyReport()
        write_local(project, log, plan.changes, expected=None, report=report)
        if report.refused:
            print(report.summary(), file=sys.stderr)
    record_rewind(log, plan)
    where = "the next sandbox of this session starts from it" if mode == "copy" else "the files are restored"
    what = {"both": "conversation and code", "conversation": "conversation only", "code": "code only"}[choice]
    print(f"Rewound to before prompt {plan.prompt.number} ({what}); {where}. Resume with: tether -r {log.session_id}")
    return 0
