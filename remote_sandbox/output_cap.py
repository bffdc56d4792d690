"""The output cap of an Exec: stream the head, spill everything to a file once past the cap."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO


class OutputCap:
    """Streams output up to a byte cap; past it, all output goes to a spill file."""

    def __init__(self, cap: int, spill_file: Path) -> None:
        """Cap the streamed bytes at ``cap``; spill to ``spill_file`` when needed."""
        self.cap = max(cap, 0)
        self.spill_file = spill_file
        self.streamed = 0
        self.counts = {"out": 0, "err": 0}
        """All bytes seen per stream, streamed or not."""
        self._head: list[bytes] = []
        self._spill: BinaryIO | None = None

    @property
    def truncated(self) -> bool:
        """Whether some output went only to the spill file."""
        return self._spill is not None

    def take(self, stream: str, data: bytes) -> bytes:
        """Account for a chunk; return the part that may still be streamed."""
        self.counts[stream] += len(data)
        room = self.cap - self.streamed
        if self._spill is None and len(data) <= room:
            self.streamed += len(data)
            self._head.append(data)
            return data
        if self._spill is None:
            # The spill file holds all output, so the part already streamed goes first.
            self._spill = open(self.spill_file, "wb")  # noqa: SIM115 - closed in close()
            # No size cap: the contract promises the whole output, and a command that
            # wants to fill the disk can write to its workspace just as well.
            self._spill.writelines(self._head)
            self._head.clear()
        self._spill.write(data)
        head = data[: max(room, 0)]
        self.streamed += len(head)
        return head

    def close(self) -> None:
        """Finish the spill file."""
        if self._spill is not None and not self._spill.closed:
            self._spill.close()
