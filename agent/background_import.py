"""Imports on a background thread that step aside while the user is typing or scrolling.

Importing the ``anthropic`` SDK takes seconds of CPU, and a thread that holds the GIL
that long halves the speed of the screen beside it. Imports proceed module by module,
so a thread registered here pauses before its next module while the user has been
active within ``QUIET_S``: keys are answered at full speed, and the import catches up
in the pauses between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import threading
import time
from collections.abc import Callable

QUIET_S = 0.15
"""After a key or a click, background imports wait this long for the screen to settle before going on."""

_quiet_after = 0.0
_yielding: set[int] = set()
"""Ids of the threads that step aside."""


def note_interaction() -> None:
    """The user pressed a key or moved the mouse: background imports pause for ``QUIET_S``."""
    global _quiet_after
    _quiet_after = time.monotonic() + QUIET_S


def quiet_in() -> float:
    """Seconds until the user will have been quiet for ``QUIET_S`` (0: quiet now)."""
    return max(0.0, _quiet_after - time.monotonic())


def wait_until_quiet() -> None:
    """On a registered thread: pause until the user has been quiet for ``QUIET_S`` (elsewhere: return at once)."""
    if threading.get_ident() in _yielding:
        while (wait := _quiet_after - time.monotonic()) > 0:
            time.sleep(min(wait, QUIET_S))


class _StepAside:
    """A finder that finds nothing: it only holds a registered thread back before each module it imports.

    Never a deadlock: the pause ends on its own within ``QUIET_S`` of the last interaction, even if
    another thread is waiting for a module this one is importing.
    """

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        wait_until_quiet()
        return None


_FINDER = _StepAside()


def run_in_background(work: Callable[[], object], *, name: str) -> threading.Thread:
    """Run ``work`` on a daemon thread that steps aside for the user before each module it imports
    (and wherever it calls ``wait_until_quiet``)."""

    def run() -> None:
        _yielding.add(threading.get_ident())
        try:
            work()
        finally:
            _yielding.discard(threading.get_ident())

    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def import_in_background(*modules: str, name: str, then: Callable[[], None] | None = None) -> threading.Thread:
    """Import ``modules`` on a daemon thread that steps aside for the user; ``then`` runs on it afterwards.

    A module that fails to import is left alone: whoever needs it imports it again and gets the error
    there (a traceback from this thread would only be printed over the screen).
    """

    def work() -> None:
        try:
            for module in modules:
                importlib.import_module(module)
        except Exception:  # noqa: BLE001, S110 - see the docstring
            pass
        if then is not None:
            then()

    return run_in_background(work, name=name)


async def imported_in_background(*modules: str, name: str) -> None:
    """Import ``modules`` on a thread that steps aside for the user; return once it is done (or has failed).

    Awaiting it starts no other thread: ``asyncio.to_thread`` would start one (and import its executor) on
    the loop, each a wait for the GIL while the import thread holds it.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
            loop.call_soon_threadsafe(_resolve, done)

    import_in_background(*modules, name=name, then=finished)
    await done


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # not if cancelled
        future.set_result(None)
