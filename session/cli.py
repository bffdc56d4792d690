"""`tether sessions ...`: list, show, search and export sessions, and collect unused blobs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn, TextIO

from session.errors import SessionStoreError
from session.events import Event, EventType
from session.gc import CollectionReport, collect_garbage, project_folders
from session.index import SearchHit, SessionSummary, summarize
from session.log import SessionLog
from session.store import SessionStore
from session.transcript import render_markdown

PROG = "tether sessions"
"""How the command names itself in messages."""


class UsageError(Exception):
    """The command line could not be understood."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 1, like every other error."""

    def error(self, message: str) -> NoReturn:
        """Raise UsageError instead of printing usage and exiting with 2."""
        raise UsageError(f"{message} (see `{PROG} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The parser for `tether sessions`."""
    parser = _Parser(prog=PROG, description="List, show, search and export tether sessions; collect unused blobs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    listing = commands.add_parser("list", help="sessions of this project (or all), newest first")
    listing.add_argument("--all", action="store_true", help="sessions of every project")
    listing.add_argument("--project", metavar="DIR", type=Path, help="sessions of DIR (default: the current directory)")

    show = commands.add_parser("show", help="a session's summary and transcript")
    show.add_argument("session_id", metavar="ID", help="a session id or a unique prefix of one")

    search = commands.add_parser("search", help="sessions whose messages or tool results hold every word")
    search.add_argument("text", metavar="TEXT", nargs="+", help="the words to look for")
    search.add_argument("--all", action="store_true", help="search every project")
    search.add_argument(
        "--project", metavar="DIR", type=Path, help="search DIR's sessions (default: the current directory)"
    )
    search.add_argument("--limit", type=int, default=50, help="at most this many sessions (default 50)")

    export = commands.add_parser("export", help="a session as Markdown or as the API's messages JSON")
    export.add_argument("session_id", metavar="ID", help="a session id or a unique prefix of one")
    export.add_argument("--format", choices=["md", "json"], default="md", help="md (default) or json")

    gc = commands.add_parser(
        "gc", help="remove blobs (tool outputs, checkpoint files) no session names, if older than an hour"
    )
    gc.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    where = gc.add_mutually_exclusive_group()
    where.add_argument(
        "--project", metavar="DIR", type=Path, help="collect DIR's blobs (default: the current directory)"
    )
    where.add_argument("--all", action="store_true", help="collect the blobs of every project")
    return parser


def main(argv: list[str]) -> int:
    """Run `tether sessions` with argv (without the program name); return the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s", stream=sys.stderr)
    try:
        try:
            arguments = build_parser().parse_args(argv)
        except SystemExit as finished:  # --help
            return finished.code if isinstance(finished.code, int) else 0
        store = SessionStore()
        try:
            return _COMMANDS[arguments.command](store, arguments, sys.stdout)
        finally:
            store.close()
    except (UsageError, SessionStoreError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (`| head`) went away: not an error, and no traceback on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _list(store: SessionStore, arguments: argparse.Namespace, out: TextIO) -> int:
    """`list`: one line per session."""
    project = None if arguments.all else (arguments.project or Path.cwd())
    summaries = store.list(project)
    if not summaries:
        where = "any project" if project is None else str(project)
        print(f"No sessions in {where}.", file=out)
        return 0
    rows = [("ID", "UPDATED", "MSGS", *(["PROJECT"] if project is None else []), "TITLE")]
    for summary in summaries:
        rows.append(
            (
                summary.session_id[:8],
                _local_time(summary.updated),
                str(summary.message_count),
                *([_short_path(summary.project_dir)] if project is None else []),
                summary.title or "(untitled)",
            )
        )
    _print_table(rows, out, right_aligned={2})
    return 0


def _show(store: SessionStore, arguments: argparse.Namespace, out: TextIO) -> int:
    """`show`: the summary, then the transcript of the live conversation."""
    log = store.open(arguments.session_id)
    events = log.events()
    summary = summarize(log.session_id, log.path, events)
    _print_summary(summary, out, unpriced=_unpriced_answers(events))
    transcript = render_markdown(log.live_path())
    print(file=out)
    out.write(transcript or "(no messages yet)\n")
    return 0


def _search(store: SessionStore, arguments: argparse.Namespace, out: TextIO) -> int:
    """`search`: one entry per matching session, with the matching text."""
    project = None if arguments.all else (arguments.project or Path.cwd())
    hits = store.search(" ".join(arguments.text), project, limit=arguments.limit)
    if not hits:
        where = "any project" if project is None else str(project)
        print(f"No matches in {where}.", file=out)
        return 0
    for hit in hits:
        _print_hit(hit, out, show_project=project is None)
    return 0


def _export(store: SessionStore, arguments: argparse.Namespace, out: TextIO) -> int:
    """`export`: the session as Markdown or JSON (see `export_text`)."""
    out.write(export_text(store.open(arguments.session_id), arguments.format))
    return 0


def export_text(log: SessionLog, format: str) -> str:
    """A session as a Markdown transcript (``md``), or {session_id, project_dir, messages, context} as JSON.

    ``messages`` is the whole conversation, compaction summaries in their place, as the
    Markdown has it; ``context`` is what the model is given now (from the newest compaction on).
    """
    if format == "json":
        document = {
            "session_id": log.session_id,
            "project_dir": str(log.project_dir),
            "messages": log.conversation(whole_history=True),
            "context": log.conversation(),
        }
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    summary = summarize(log.session_id, log.path, log.events())
    return (
        f"# {summary.title or 'Untitled session'}\n\n"
        f"- Session: `{log.session_id}`\n- Project: `{log.project_dir}`\n"
        f"- Created: {_local_time(summary.created)}\n- Updated: {_local_time(summary.updated)}\n\n"
        + render_markdown(log.live_path())
    )


def _gc(store: SessionStore, arguments: argparse.Namespace, out: TextIO) -> int:
    """`gc`: remove each project's unreferenced old blobs, one line per blob, then a total."""
    project = None if arguments.all else (arguments.project or Path.cwd())
    folders = project_folders(store.home, project)
    if not folders:
        where = "any project" if project is None else str(project)
        print(f"No sessions in {where}.", file=out)
        return 0
    failed = False
    reports: list[CollectionReport] = []
    for folder in folders:
        try:
            report = collect_garbage(folder, dry_run=arguments.dry_run)
        except SessionStoreError as error:
            # One unreadable project must not stop the others from being collected.
            print(f"{PROG}: error: {error}", file=sys.stderr)
            failed = True
            continue
        reports.append(report)
        verb = "would remove" if arguments.dry_run else "removed"
        prefix = f"{folder.name}: " if project is None else ""
        for item in report.removed:
            print(f"{prefix}{verb} {item.name}  {_size(item.size)}", file=out)
    removed = sum(len(report.removed) for report in reports)
    freed = sum(report.bytes_freed for report in reports)
    referenced = sum(report.kept_referenced for report in reports)
    young = sum(report.kept_young for report in reports)
    verb = "Would remove" if arguments.dry_run else "Removed"
    print(
        f"{verb} {removed} blob{'s' if removed != 1 else ''}, "
        f"{'would free' if arguments.dry_run else 'freed'} {_size(freed)}; "
        f"kept {referenced} in use and {young} younger than an hour.",
        file=out,
    )
    return 1 if failed else 0


_COMMANDS = {"list": _list, "show": _show, "search": _search, "export": _export, "gc": _gc}


def _unpriced_answers(events: list[Event]) -> int:
    """How many assistant messages have no cost (their model had no price when they were written)."""
    unpriced = 0
    for event in events:
        cost = event.payload.get("cost_usd") if event.type == EventType.ASSISTANT else 0.0
        unpriced += not isinstance(cost, (int, float)) or isinstance(cost, bool)
    return unpriced


def _cost(summary: SessionSummary, unpriced: int) -> str:
    """The session's cost, never a made-up $0 for answers whose price is unknown."""
    if not unpriced:
        return f"${summary.cost_usd:.4f}"
    answers = f"{unpriced} answer{'s' if unpriced != 1 else ''}"
    if summary.cost_usd == 0:
        return f"unknown (no price for the model of {answers})"
    return f"${summary.cost_usd:.4f} plus unknown (no price for the model of {answers})"


def _print_summary(summary: SessionSummary, out: TextIO, *, unpriced: int = 0) -> None:
    """The facts about one session, one per line."""
    rows = [
        ("Session", summary.session_id),
        ("Title", summary.title or "(untitled)"),
        ("Project", str(summary.project_dir)),
        ("Created", _local_time(summary.created)),
        ("Updated", _local_time(summary.updated)),
        ("Messages", str(summary.message_count)),
        ("Cost", _cost(summary, unpriced)),
        ("Log", str(summary.path)),
    ]
    for label, value in rows:
        print(f"{label:<9} {value}", file=out)


def _print_hit(hit: SearchHit, out: TextIO, *, show_project: bool) -> None:
    """A search hit: id, time and title, then the snippet indented below."""
    project = f"  ({_short_path(hit.project_dir)})" if show_project else ""
    print(f"{hit.session_id[:8]}  {_local_time(hit.updated)}  {hit.title or '(untitled)'}{project}", file=out)
    print(f"    {hit.kind}: {hit.snippet}", file=out)


def _print_table(rows: list[tuple[str, ...]], out: TextIO, *, right_aligned: set[int]) -> None:
    """Rows as aligned columns; the last column is left free to run long."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [
            cell.rjust(widths[column]) if column in right_aligned else cell.ljust(widths[column])
            for column, cell in enumerate(row[:-1])
        ]
        print("  ".join([*cells, row[-1]]), file=out)


def _size(size: int) -> str:
    """A byte count for people: bytes exactly, with KiB/MiB/GiB beside larger ones."""
    if size < 1024:
        return f"{size} bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size} bytes ({size / scale:.1f} {unit})"
    return f"{size} bytes"


def _local_time(timestamp: str) -> str:
    """A UTC ISO-8601 timestamp as local 'YYYY-MM-DD HH:MM' (or as given if unparsable)."""
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return timestamp or "?"


def _short_path(path: Path) -> str:
    """path with the home directory written as ~."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if home != "/" and (text == home or text.startswith(home + "/")) else text


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
