"""``tether resident status | start | stop [--all]``: see and control the warm processes behind ``tether -p``."""

from __future__ import annotations

import argparse
import sys
import time

from tui.resident import ResidentUnavailable, runtime_dir, socket_path
from tui.resident.client import ResidentInfo, list_residents, start, stop


def main(argv: list[str]) -> int:
    """Entry point of ``tether resident``."""
    parser = argparse.ArgumentParser(
        prog="tether resident", description="The resident harness processes that keep `tether -p` warm."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="list every resident harness process of this user")
    commands.add_parser("start", help="start the one this tether uses (if it is not running) and wait until it listens")
    stopping = commands.add_parser("stop", help="stop the one this tether uses")
    stopping.add_argument(
        "--all", action="store_true", help="stop every one, whichever checkout or interpreter started it"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return _status()
        if args.command == "start":
            pid = start()
            print(f"resident harness {pid} listening on {socket_path()}")
            return 0
        return _stop(everyone=args.all)
    except (ResidentUnavailable, OSError) as exc:
        print(f"tether resident: {exc}", file=sys.stderr)
        return 1


def _status() -> int:
    residents = list_residents()
    if not residents:
        print(f"no resident harness is running (sockets live in {runtime_dir()})")
        return 0
    now = time.time()
    for info in residents:
        mark = "*" if info.current else " "
        print(f"{mark} pid {info.pid}  {_age(now - info.started) if info.started else '?'} old  {_activity(info)}")
        print(f"    socket  {info.socket}")
        print(f"    code    {info.root or '?'} (version {info.version})")
        print(f"    python  {info.python or '?'}")
    print(
        "(* the one this tether uses)"
        if any(i.current for i in residents)
        else "(none of them runs this tether's code)"
    )
    return 0


def _activity(info: ResidentInfo) -> str:
    served = "?" if info.runs_served is None else str(info.runs_served)
    if info.running:
        return f"{served} runs served, {info.running} running"
    idle = "?" if info.idle_s is None else _age(info.idle_s)
    return f"{served} runs served, idle {idle}"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _stop(*, everyone: bool) -> int:
    residents = list_residents()
    chosen = residents if everyone else [i for i in residents if i.current]
    if not chosen:
        print(
            "no resident harness to stop"
            + ("" if everyone or not residents else f" for this tether ({len(residents)} others: --all stops them)")
        )
        return 0
    alive = stop(chosen)
    for info in chosen:
        if info.pid not in alive:
            print(f"stopped resident harness {info.pid} ({info.socket})")
    for pid in alive:
        print(f"tether resident: {pid} did not exit within the grace period", file=sys.stderr)
    return 1 if alive else 0
