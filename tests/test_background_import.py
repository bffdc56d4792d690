"""Background imports step aside while the user is active, and finish once the user is quiet."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import background_import
from agent.background_import import import_in_background


def _paused_in_finder(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code in (
            background_import._StepAside.find_spec.__code__,
            background_import.wait_until_quiet.__code__,
        ):
            return True
        frame = frame.f_back
    return False


def test_a_background_import_waits_while_the_user_is_active_then_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tether_bg_first.py").write_text("VALUE = 1\n")
    (tmp_path / "tether_bg_second.py").write_text("import tether_bg_first\nVALUE = tether_bg_first.VALUE + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # The user is active for as long as the test says.
    monkeypatch.setattr(background_import, "_quiet_after", time.monotonic() + 3600)
    done = threading.Event()
    thread = import_in_background("tether_bg_second", name="test-import", then=done.set)
    try:
        deadline = time.monotonic() + 30
        while not _paused_in_finder(thread):
            assert time.monotonic() < deadline, "the import never reached the point where it steps aside"
            assert thread.is_alive(), "the import ran while the user was active"
            time.sleep(0.005)  # polling a condition, bounded by the deadline
        assert "tether_bg_second" not in sys.modules and not done.is_set()
    finally:
        monkeypatch.setattr(background_import, "_quiet_after", 0.0)  # the user is quiet: the import goes on
        thread.join(timeout=30)
    assert not thread.is_alive() and done.is_set()
    assert sys.modules["tether_bg_second"].VALUE == 2
    # Other threads never wait: this one imports while "the user" is active.
    monkeypatch.setattr(background_import, "_quiet_after", time.monotonic() + 3600)
    (tmp_path / "tether_bg_third.py").write_text("VALUE = 3\n")
    import tether_bg_third  # type: ignore[import-not-found]

    assert tether_bg_third.VALUE == 3
    for name in ("tether_bg_first", "tether_bg_second", "tether_bg_third"):
        sys.modules.pop(name, None)


def test_background_work_waits_where_it_asks_to_and_only_on_its_own_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background_import, "_quiet_after", time.monotonic() + 3600)
    background_import.wait_until_quiet()  # not a registered thread: returns at once, however active the user is
    done = threading.Event()

    def work() -> None:
        background_import.wait_until_quiet()
        done.set()

    thread = background_import.run_in_background(work, name="test-work")
    try:
        deadline = time.monotonic() + 30
        while not _waiting_until_quiet(thread):
            assert time.monotonic() < deadline and thread.is_alive(), "the work did not wait for the user"
            time.sleep(0.005)  # polling a condition, bounded by the deadline
        assert not done.is_set()
    finally:
        monkeypatch.setattr(background_import, "_quiet_after", 0.0)
        thread.join(timeout=30)
    assert done.is_set()


def _waiting_until_quiet(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code is background_import.wait_until_quiet.__code__:
            return True
        frame = frame.f_back
    return False


async def test_awaiting_a_background_import_starts_no_other_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tether_bg_awaited.py").write_text("VALUE = 4\n")
    (tmp_path / "tether_bg_broken.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    failures: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    monkeypatch.setattr(background_import, "_quiet_after", 0.0)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(background_import.imported_in_background("tether_bg_awaited", name="test-await"), 30)
        assert sys.modules["tether_bg_awaited"].VALUE == 4
        # A failed import ends the wait too (whoever needs the module then gets the error itself).
        await asyncio.wait_for(background_import.imported_in_background("tether_bg_broken", name="test-await"), 30)
        assert "tether_bg_broken" not in sys.modules
        for thread in threading.enumerate():
            if thread.name == "test-await":
                thread.join(timeout=30)
        assert not failures, "the failure is left to whoever imports the module; no traceback over the screen"
        # No executor was made to wait on the thread (asyncio.to_thread would have made one).
        assert loop._default_executor is None  # type: ignore[attr-defined]
    finally:
        for name in ("tether_bg_awaited", "tether_bg_broken"):
            sys.modules.pop(name, None)
