"""Which gRPC status code, with which message, each of our errors ends an RPC with.

One table, one meaning per code (see the .proto). Anything not in it is
INTERNAL with the exception named, so a user reads what failed rather than a
traceback.
"""

from __future__ import annotations

import errno

import grpc

from remote_sandbox.auth import NotAuthenticated
from remote_sandbox.providers.base import (
    InvalidRequest,
    LimitExceeded,
    PermissionDenied,
    ProviderError,
    SandboxNotFound,
    SandboxNotRunning,
)

STATUS_OF_ERROR: dict[type[Exception], grpc.StatusCode] = {
    NotAuthenticated: grpc.StatusCode.UNAUTHENTICATED,
    SandboxNotFound: grpc.StatusCode.NOT_FOUND,
    SandboxNotRunning: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}
"""Our errors and the status code each one stands for; the message is the error's own."""

_REQUEST_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.ELOOP)
"""OS errors a file operation meets because of the path it was asked for: the request's fault."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message ``exc`` ends an RPC with."""
    for kind, code in STATUS_OF_ERROR.items():
        if isinstance(exc, kind):
            return code, str(exc)
    if isinstance(exc, ProviderError):
        return grpc.StatusCode.INTERNAL, f"the sandbox provider failed: {exc}"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, f"the sandbox host is out of disk space: {exc.strerror}"
        if exc.errno in _REQUEST_ERRNOS:
            return grpc.StatusCode.INVALID_ARGUMENT, f"{exc.strerror}: {exc.filename or ''}".rstrip(": ")
    return grpc.StatusCode.INTERNAL, f"internal error in the sandbox host: {type(exc).__name__}: {exc}"
