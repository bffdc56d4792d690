"""What a ``FileInfo`` says about a file: built from a stat result."""

from __future__ import annotations

import os
import stat

from protos.tether.sandbox.v1 import sandbox_pb2 as pb
from remote_sandbox.paths import shown

_KINDS = {
    stat.S_IFREG: pb.FileInfo.FILE,
    stat.S_IFDIR: pb.FileInfo.DIRECTORY,
    stat.S_IFLNK: pb.FileInfo.SYMLINK,
}


def file_info(path: str, st: os.stat_result) -> pb.FileInfo:
    """A FileInfo of ``path`` (as the sandbox sees it) from its stat result."""
    return pb.FileInfo(
        # A name that is not UTF-8 (a tar member or a sandboxed command can make one) is shown approximately.
        path=shown(path),
        kind=_KINDS.get(stat.S_IFMT(st.st_mode), pb.FileInfo.OTHER),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        exists=True,
    )
