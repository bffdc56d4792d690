"""Bearer-token authentication: token files, the token table, and the server interceptor.

Each token maps to a tenant; a tenant sees only its own sandboxes. Tokens are
compared in constant time against every configured token, so timing reveals
neither a token nor how many there are. The health service and reflection
answer without a token: they tell nothing about any sandbox, and health probes
(load balancers, ``grpc_health_probe``) carry no credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from pathlib import Path

import grpc
import grpc.aio

rpc_log = logging.getLogger("remote_sandbox.rpc")

MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused: they could be guessed."""

PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Methods that answer without a token."""

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")

_CALLER_TENANT: ContextVar[str | None] = ContextVar("tether_caller_tenant", default=None)
"""The tenant of the RPC being served, as the interceptor resolved it."""


class NotAuthenticated(Exception):
    """The call carries no tenant: the interceptor did not let it in (UNAUTHENTICATED)."""


def caller_tenant() -> str:
    """The tenant of the RPC being served; ``NotAuthenticated`` if the interceptor resolved none."""
    tenant = _CALLER_TENANT.get()
    if tenant is None:
        raise NotAuthenticated("authentication failed: no valid bearer token")
    return tenant


class TokenFileError(Exception):
    """A token file is missing, unreadable or malformed; the message says where and why."""


def tenant_for_token(token: str) -> str:
    """The tenant a token names when its line gives none: ``t-`` and 8 hex digits of its sha256."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def parse_token_lines(lines: Sequence[str], source: str = "token file") -> dict[str, str]:
    """Tokens to tenants from ``TOKEN`` or ``TENANT TOKEN`` lines; ``#`` comments and blank lines are skipped."""
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        words = text.split()
        if len(words) == 1:
            token, tenant = words[0], tenant_for_token(words[0])
        elif len(words) == 2:
            tenant, token = words
            if not _TENANT.match(tenant):
                raise TokenFileError(
                    f"{source}, line {number}: tenant {tenant!r} must be letters, digits, '.', '_' or '-'"
                )
        else:
            raise TokenFileError(
                f"{source}, line {number}: expected 'TOKEN' or 'TENANT TOKEN', found {len(words)} words"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenFileError(
                f"{source}, line {number}: a token must have at least {MIN_TOKEN_LENGTH} characters "
                "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        if token in tokens and tokens[token] != tenant:
            raise TokenFileError(f"{source}, line {number}: this token is already given to tenant {tokens[token]!r}")
        tokens[token] = tenant
    return tokens


def load_token_file(path: Path) -> dict[str, str]:
    """Read a token file (see ``parse_token_lines``); it must name at least one token."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    tokens = parse_token_lines(text.splitlines(), source=str(path))
    if not tokens:
        raise TokenFileError(f"token file {path} holds no token")
    return tokens


def token_file_is_private(path: Path) -> bool:
    """Whether only the owner may read ``path`` (no group or other permission bits)."""
    return path.stat().st_mode & 0o077 == 0


class TokenTable:
    """The configured tokens and the tenant each one stands for."""

    def __init__(self, tokens: dict[str, str]) -> None:
        """Hold ``tokens`` (token -> tenant)."""
        if not tokens:
            raise ValueError("a sandbox host needs at least one token")
        self._entries = [(token.encode(), tenant) for token, tenant in tokens.items()]

    def tenant(self, presented: str | None) -> str | None:
        """The tenant of ``presented``, or None; compares against every token in constant time."""
        candidate = (presented or "").encode()
        found = None
        for token, tenant in self._entries:
            if hmac.compare_digest(candidate, token) and found is None:
                found = tenant
        return found

    def tenant_from_metadata(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """The tenant of the ``authorization: Bearer <token>`` entry in ``metadata``, or None."""
        return self.tenant(bearer_token(metadata))


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, or None."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection unless it carries a known bearer token; publishes its tenant."""

    def __init__(self, table: TokenTable) -> None:
        """Check calls against ``table``."""
        self.table = table
        """The tokens that are let in."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass the call on, or answer it with UNAUTHENTICATED without running the handler."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        tenant = self.table.tenant(token)
        if tenant is not None:
            # grpc.aio runs the interceptors and then the handler in the one task it makes
            # per RPC, so the handler sees this and no other call does: the servicer reads
            # the tenant here rather than authenticating a second time.
            _CALLER_TENANT.set(tenant)
            return handler
        reason = "no bearer token was sent" if token is None else "the bearer token is not valid here"
        rpc_log.info(
            "rpc method=%s tenant=- sandbox=- status=UNAUTHENTICATED duration_ms=0.0 reason=%s",
            method.rsplit("/", 1)[-1],
            "no-token" if token is None else "bad-token",
        )
        return _refusal(handler, f"authentication failed: {reason}")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
