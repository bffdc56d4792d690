"""A content-addressed blob directory: each blob is stored once, named by its sha256."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

from session.durable import fsync_directory
from session.errors import SessionStoreError, describe_os_error

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class BlobNotFound(SessionStoreError):
    """No blob with the given sha256 is in the store."""


class BlobStore:
    """Blobs at root/ab/cdef… (sha256 hex split after two characters), written atomically."""

    def __init__(self, root: Path) -> None:
        self.root: Path = root
        """The blob directory."""

    def path_for(self, sha: str) -> Path:
        """Where the blob with this sha256 lives (whether or not it exists)."""
        if not _SHA256_HEX.fullmatch(sha):
            raise SessionStoreError(f"not a sha256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha[2:]

    def put(self, data: bytes) -> str:
        """Store data unless already present; return its sha256 hex."""
        sha = hashlib.sha256(data).hexdigest()
        final = self.path_for(sha)
        if final.exists():
            return sha
        directory = final.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise describe_os_error("create the blob directory", directory, error) from None
        temporary = directory / f".tmp-{uuid.uuid4().hex}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, final)
            fsync_directory(directory)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise describe_os_error("write the blob", final, error) from None
        return sha

    def get(self, sha: str) -> bytes:
        """The bytes of the blob with this sha256; BlobNotFound if it is absent."""
        path = self.path_for(sha)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha} in {self.root}", path) from None
        except OSError as error:
            raise describe_os_error("read the blob", path, error) from None

    def __contains__(self, sha: object) -> bool:
        """Whether a blob with this sha256 is stored."""
        return isinstance(sha, str) and bool(_SHA256_HEX.fullmatch(sha)) and self.path_for(sha).exists()

