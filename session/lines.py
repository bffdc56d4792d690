"""Split a log file into lines through one reused buffer, never holding the whole file.

A long session is tens of megabytes. Reading it whole and splitting it copies every
byte twice into fresh memory (the file's bytes, then one bytes object per line)
before the parser copies them a third time into strings; each copy costs page
faults. Reading chunk by chunk into one buffer and handing out views of it costs
one copy from the page cache into memory the CPU cache already holds.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

CHUNK_BYTES = 1 << 20
"""How much is read at a time: large enough that reads are few, small enough to stay in cache."""


def read_lines(
    file: io.RawIOBase | io.BufferedIOBase, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[memoryview, bool]]:
    """Each line of file without its newline, and whether a newline ended it.

    Only the last line can lack its newline (a torn write); it is yielded only if
    it is not empty. A view points into a buffer that later lines overwrite:
    use it (parse it, or copy it with bytes()) before taking the next one.
    """
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    filled = 0  # buffer[:filled] holds the start of a line that no newline has ended yet
    while True:
        count = file.readinto(view[filled:])
        if not count:
            break
        end = filled + count
        start = 0
        newline = buffer.find(b"\n", filled, end)  # the carried-over bytes hold no newline
        while newline >= 0:
            yield view[start:newline], True
            start = newline + 1
            newline = buffer.find(b"\n", start, end)
        filled = end - start
        if start:
            view[:filled] = view[start:end]  # overlapping ranges are fine: memoryview copies with memmove
        elif filled == len(buffer):
            # One line longer than the buffer: grow it (views already handed out keep the old one).
            grown = bytearray(2 * len(buffer))
            grown[:filled] = buffer
            buffer, view = grown, memoryview(grown)
    if filled:
        yield view[:filled], False
