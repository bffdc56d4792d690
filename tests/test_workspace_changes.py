"""Writing a file back into the project (``tether apply``): atomic, whatever the name."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.workspace.changes import _replace


def test_a_255_byte_name_of_multibyte_characters_is_replaced(tmp_path: Path) -> None:
    name = "é" * 127 + "a"  # 255 bytes in UTF-8: the longest name a directory entry takes
    target = tmp_path / "src" / name
    _replace(str(target), stat.S_IFREG | 0o644, b"new content\n")
    _replace(str(target), stat.S_IFREG | 0o600, b"newer content\n")
    assert target.read_bytes() == b"newer content\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == [name], "no temporary file is left beside it"
