"""Which of gRPC core's I/O engines tether's processes run: chosen before grpc is first imported.

gRPC core reads ``GRPC_EXPERIMENTS`` once, when grpc is imported. By default
(1.85) its sockets are polled by EventEngine threads, which hand each
completion to the thread grpc.aio polls the completion queue from, which
wakes the event loop. With the EventEngine client and listener turned off,
the completion-queue thread polls the sockets itself: one thread hop less
per message on either side. Measured on a 2-core VM (calls alternating in
one run): a bare grpc.aio call 0.13-0.25 ms faster (1.15-1.44 ms before), an
Exec of ``true`` through a host subprocess 0.03-0.27 ms faster (4 runs, load 1.3-2.5).

Experiment names are internal to gRPC and change between releases, and an
unknown one is logged on stderr whatever ``GRPC_VERBOSITY`` says: the
choice is made only for the releases it was measured on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

POLLING_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
"""``GRPC_EXPERIMENTS``: connections through iomgr, polled by the thread that waits on the completion queue."""

MEASURED_RELEASES = ("1.85.",)
"""grpcio releases whose experiments these are (prefixes of ``grpc.__version__``)."""


def installed_grpc_version() -> str:
    """The version of the grpc that ``import grpc`` would find, read without importing it (which would start
    its core) and with nothing but ``os``: this runs as every ``tether`` command starts. "" if unknown."""
    for entry in sys.path:
        try:
            with open(os.path.join(entry or ".", "grpc", "_grpcio_metadata.py"), encoding="utf-8") as metadata:
                text = metadata.read()
        except OSError:
            continue
        # The file is one line: __version__ = """1.85.3"""
        _, equals, value = text.partition("__version__")[2].partition("=")
        return value.strip().splitlines()[0].strip("'\" ") if equals and value.strip() else ""
    return ""


def choose_io_engine(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``GRPC_EXPERIMENTS`` to ``POLLING_EXPERIMENTS`` for this process and its children; whether it did.

    Nothing changes when grpc is already imported (too late), when the user set
    ``GRPC_EXPERIMENTS`` (theirs is kept), or when grpcio is a release it was
    not measured on.
    """
    environ = os.environ if environ is None else environ
    if "grpc" in sys.modules or "GRPC_EXPERIMENTS" in environ:
        return False
    if not installed_grpc_version().startswith(MEASURED_RELEASES):
        return False
    environ["GRPC_EXPERIMENTS"] = POLLING_EXPERIMENTS
    return True
