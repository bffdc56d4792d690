"""A 2,000-message session in the TUI, in tmux: resume to prompt ready, keys while scrolling, memory.

The same measures on a 20-message session are the baseline, alternating big and small:
A. ``tether -r ID`` → prompt ready (the conversation shown, the prompt takes input, the status bar drawn;
   the sandbox may still be starting), whole process; 20 messages vs 2,000.
   Target: ≤ 0.5 s for 2,000 messages; the difference to 20 messages is what the history costs.
B. PageUp ×3 / PageDown ×2 … pressed while scrolling the resumed 2,000-message transcript (20 keys on
   the 20-message one, which is about ten pages: more would reach its top, where a key changes nothing) → the
   screen changed (capture-pane), per key. Target: p95 ≤ 50 ms.
C. RSS of the tether process once ready and settled (after B, once it has stopped growing: the SDK is
   imported and the sandbox started by then): 2,000 messages vs 20. Target: ≤ 2×.
D. In process (headless app, no sandbox): the transcript showing a resumed live path of 2,000
   vs 20 messages, through the first paint; and RSS after a live session of 2,000 messages
   (prompts, streamed answers, tool calls with output) vs after its first 20.

Run: .venv/bin/python bench/bench_transcript_session.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import isolated_env, percentile, scratch, summary, tether, tether_prompt_ready  # noqa: E402
from bench.markdown_answer import markdown_answer  # noqa: E402
from bench.tmux_screen import TmuxScreen, stop_server  # noqa: E402
from tests.fixtures.fake_api import FakeMessagesAPI, reply, text  # noqa: E402


def write_session(home: Path, project: Path, messages: int) -> str:
    """A session of ``messages`` messages (prompt, answer with a tool call, its result, answer…); its id."""
    from session.store import SessionStore

    answer = markdown_answer(1_200)
    log = SessionStore(home).create(project)
    for turn in range(messages // 2):
        log.append("user", {"content": f"prompt number {turn}: what is in the project?"})
        if turn % 2:
            content = [{"type": "text", "text": f"Answer {turn}.\n\n" + answer}]
            log.append(
                "assistant",
                {
                    "message": {
                        "id": f"msg_{turn}",
                        "model": "claude-sonnet-4-5",
                        "content": content,
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": 100, "output_tokens": 50},
                    },
                    "cost_usd": 0.001,
                },
            )
        else:
            tool = {"type": "tool_use", "id": f"toolu_{turn}", "name": "Bash", "input": {"command": f"seq 1 {turn}"}}
            log.append(
                "assistant",
                {
                    "message": {
                        "id": f"msg_{turn}",
                        "model": "claude-sonnet-4-5",
                        "content": [{"type": "text", "text": f"Running step {turn}."}, tool],
                        "stop_reason": "tool_use",
                        "usage": {"input_tokens": 100, "output_tokens": 50},
                    },
                    "cost_usd": 0.001,
                },
            )
            output = "\n".join(str(n) for n in range(1, min(turn, 40) + 1))
            log.append(
                "tool_result",
                {"tool_use_id": f"toolu_{turn}", "tool_name": "Bash", "content": output, "is_error": False},
            )
    log.close()
    return log.session_id


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` and its threads, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def settled_rss_kib(pid: int, steady_s: float = 1.0, longest_s: float = 20.0) -> int:
    """RSS of ``pid`` once it has not changed for ``steady_s``: the SDK import and the sandbox's start, which
    carry on after the screen takes input, are over (else two runs compare different moments of them)."""
    last, since = rss_kib(pid), time.monotonic()
    deadline = since + longest_s
    while time.monotonic() - since < steady_s and time.monotonic() < deadline:
        time.sleep(0.1)
        now = rss_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


def one_run(env: dict, project: Path, session_id: str, keys: int) -> tuple[float, list[float], int]:
    """Resume → ready seconds, per-key screen latencies, RSS KiB."""
    start = time.perf_counter()
    screen = TmuxScreen("resume", [*tether(), "-r", session_id], env, project, (120, 34))
    try:
        ready = screen.wait_for(tether_prompt_ready) - start
        latencies: list[float] = []
        before = screen.text()
        for i in range(keys):
            # Drifting up, a page every five keys: never at the bottom, and the top keeps moving up as earlier
            # entries are built there (a resumed screen holds little more than a screen): every key scrolls.
            key = "PageUp" if i % 5 < 3 else "PageDown"
            sent = time.perf_counter()
            screen.send(key)
            seen = screen.wait_for(lambda s, b=before: s != b, timeout=10)
            latencies.append(seen - sent)
            before = screen.text()
        rss = settled_rss_kib(screen.pid())
        if "-v" in sys.argv:
            print([round(lat * 1000) for lat in latencies])
        return ready, latencies, rss
    finally:
        screen.close(wait=True)  # its sandbox host's shutdown is not the next run's start


async def _live_rss(messages: int, report_at: int) -> tuple[int, int]:
    """RSS (KiB) after ``report_at`` and after ``messages`` messages streamed into a headless transcript."""
    import os

    from agent import events as ev
    from tests.fixtures.transcript_screen import TranscriptScreenApp, user

    answer = markdown_answer(1_200)
    rss: list[int] = []

    async def scenario(transcript) -> None:  # type: ignore[no-untyped-def]
        for turn in range(messages // 2):
            await user(transcript, f"prompt number {turn}")
            for i in range(0, len(answer), 64):
                await transcript.show(ev.TextDelta(answer[i : i + 64]))
            await transcript.show(ev.AssistantMessage([], "end_turn"))
            tool_id = f"toolu_{turn}"
            await transcript.show(ev.ToolStarted(tool_id, "Bash", {"command": f"seq 1 {turn}"}))
            output = "".join(f"{n}\n" for n in range(1, turn % 50 + 2))
            await transcript.show(ev.ToolOutput(tool_id, "stdout", output))
            await transcript.show(ev.ToolFinished(tool_id, "Bash", output, False))
            if (turn + 1) * 2 == report_at:
                rss.append(rss_kib(os.getpid()))

    app = TranscriptScreenApp(scenario)
    async with app.run_test(size=(120, 34)) as pilot:
        await app.play(pilot)
        rss.append(rss_kib(os.getpid()))
    return rss[0], rss[1]


async def _history_seconds(events: list, runs: int) -> list[float]:  # type: ignore[type-arg]
    """Seconds to show ``events`` as a resumed transcript, through the first paint."""
    from tests.fixtures.transcript_screen import TranscriptScreenApp

    times = []
    for _ in range(runs):

        async def scenario(transcript) -> None:  # type: ignore[no-untyped-def]
            await transcript.show_history(events)

        app = TranscriptScreenApp(scenario)
        async with app.run_test(size=(120, 34)) as pilot:
            start = time.perf_counter()
            await app.play(pilot)
            times.append(time.perf_counter() - start)
    return times


def in_process(runs: int) -> None:
    """Part D."""
    import asyncio
    import json

    from session.store import SessionStore

    home = scratch("home-d")
    project = scratch("project-d")
    logs = {n: SessionStore(home).open(write_session(home, project, n)) for n in (20, 2000)}
    for n, log in logs.items():
        print(
            summary(f"in process: history of {n} messages shown", asyncio.run(_history_seconds(log.live_path(), runs)))
        )
    out = subprocess.run(
        [sys.executable, __file__, "--live-rss", "2000"], capture_output=True, text=True, check=True
    ).stdout
    after_20, after_2000 = json.loads(out.strip().splitlines()[-1])
    print(f"in process: RSS after 20 messages {after_20 / 1024:.1f} MiB, after 2,000 {after_2000 / 1024:.1f} MiB")
    print(f"ratio RSS live 2,000 / 20 messages: {after_2000 / after_20:.2f}x  (target ≤ 2x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("-v", action="store_true", help="print every key's latency")
    parser.add_argument("--live-rss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.live_rss:
        import asyncio
        import json

        print(json.dumps(asyncio.run(_live_rss(args.live_rss, 20))))
        return 0
    in_process(args.runs)
    project = scratch("project").resolve()
    (project / "README.md").write_text("bench project\n")
    with FakeMessagesAPI(validate=False) as api:
        api.default = lambda _body: reply(text("ok"))
        home = scratch("home")
        env = isolated_env(api.base_url, home)
        env["TERM"] = "xterm-256color"
        sessions = {n: write_session(home / "tether", project, n) for n in (20, 2000)}
        results: dict[int, list[tuple[float, list[float], int]]] = {20: [], 2000: []}
        for run in range(args.runs + 1):  # the first of each is a warm-up
            for n, session_id in sessions.items():
                # 20 messages are about ten pages: drifting up a page every five keys, 20 keys stay below the top.
                result = one_run(env, project, session_id, args.keys if n == 2000 else min(args.keys, 20))
                if run:
                    results[n].append(result)
    stop_server()

    for n in (20, 2000):
        print(summary(f"tether -r, {n} messages → ready", [r[0] for r in results[n]]))
    for n in (20, 2000):
        keys = [lat for r in results[n] for lat in r[1]]
        print(
            f"{n:>5} messages: key → screen changed   p50 {statistics.median(keys) * 1000:6.1f} ms"
            f"  p95 {percentile(keys, 95) * 1000:6.1f} ms  (n={len(keys)}, capture-pane polling included)"
        )
    rss = {n: statistics.median(r[2] for r in results[n]) for n in (20, 2000)}
    for n in (20, 2000):
        print(f"{n:>5} messages: RSS once ready, median {rss[n] / 1024:7.1f} MiB")
    ready_ratio = statistics.median(r[0] for r in results[2000]) / statistics.median(r[0] for r in results[20])
    print(f"ratio resume 2,000 / 20 messages (medians): {ready_ratio:.2f}x")
    print(f"ratio RSS 2,000 / 20 messages: {rss[2000] / rss[20]:.2f}x  (target ≤ 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
