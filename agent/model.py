"""The model client: one streamed Messages API call, with retries the user can see.

``anthropic`` is imported lazily (it takes seconds to import on a busy
machine); ``preload_sdk`` starts that import on a background thread so it
overlaps the rest of start-up.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent import events as ev
from agent.background_import import import_in_background
from agent.message_stream import API_EVENTS, MessageAccumulator, StreamEnded, StreamFormatError
from agent.options import DEFAULT_MODEL
from agent.pricing import cost_usd

"""A current Sonnet model that the installed SDK knows and does not mark deprecated."""

DEFAULT_MAX_TOKENS = 16_000
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
RETRYABLE_STREAM_ERRORS = {"overloaded_error", "api_error", "rate_limit_error"}

_preload: threading.Thread | None = None
_tls_preload: threading.Thread | None = None
_ssl_context: tuple[tuple[str | None, str | None], Any] | None = None
"""A TLS context made ahead of time by the resident harness (loading CA certificates takes ~50 ms),
with the SSL_CERT_FILE / SSL_CERT_DIR it was made for."""


def _ssl_env() -> tuple[str | None, str | None]:
    return os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")


def prepare_ssl_context() -> None:
    """Build the default TLS context now, so later clients reuse it."""
    global _ssl_context
    import httpcore2

    _ssl_context = (_ssl_env(), httpcore2.default_ssl_context())


def preload_sdk() -> None:
    """Start importing ``anthropic`` on a background thread, and building the TLS context on another (idempotent).

    Loading the CA certificates (~0.1 s) runs in C without the GIL, so on its
    own thread it is nearly free beside the import; the client made later
    reuses the context instead of building one on the first answer's path.
    """
    global _preload, _tls_preload
    if _preload is None:
        _preload = import_in_background("anthropic", name="anthropic-import", then=_freeze_imports)
    if _tls_preload is None and _ssl_context is None:
        _tls_preload = threading.Thread(target=_prepare_tls_quietly, name="tls-context", daemon=True)
        _tls_preload.start()


async def sdk_imported() -> None:
    """Return once ``anthropic`` is imported: waits for the preload off the event loop, else begins it."""
    preload_sdk()
    if _preload is not None and _preload.is_alive():
        # Importing here would block the loop on the import lock until the other thread is done.
        await asyncio.to_thread(_preload.join)


def _prepare_tls_quietly() -> None:
    try:
        prepare_ssl_context()
    except Exception:  # noqa: BLE001 - the client then builds its own, and reports what is wrong with it
        pass


def _freeze_imports() -> None:
    # The SDK's thousands of classes live as long as the process: out of the collector's sight, a full
    # collection no longer walks them (it took ~0.1 s each, several times during a long streamed answer).
    gc.freeze()


class ModelError(Exception):
    """The model could not be reached or refused the request; the message says why."""


@dataclass
class ModelResponse:
    """One whole assistant message, as plain data."""

    id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: dict[str, int]
    cost_usd: float | None
    api_ms: int = 0
    """Wall time spent in requests for this message, every try included, backoff waits not."""


@dataclass
class ModelClient:
    """Streams assistant messages from the Messages API for one session."""

    model: str = DEFAULT_MODEL
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_attempts: int = 5
    """Tries per request on retryable failures (429, 5xx, overloaded, connection lost)."""
    base_delay: float = 1.0
    """First backoff delay in seconds; doubles each try, with jitter, capped at 30 s."""
    api_key: str | None = None
    base_url: str | None = None
    stream_events: bool = False
    """Emit every raw stream event as ``StreamEvent`` (for ``--include-partial-messages``)."""
    _client: Any = field(default=None, repr=False)

    def _sdk_client(self) -> Any:
        if self._client is None:
            import anthropic

            key = self.api_key or os.environ.get("ANTHROPIC_API_KEY")
            token = os.environ.get("ANTHROPIC_AUTH_TOKEN")
            if not key and not token:
                # A compatible endpoint reached through ANTHROPIC_BASE_URL may need no key.
                key = "unused"
            extra: dict[str, Any] = {}
            if _tls_preload is not None:
                _tls_preload.join()  # started beside the SDK's import: done long before it
            if _ssl_context is not None and _ssl_context[0] == _ssl_env():
                extra["http_client"] = anthropic.DefaultAsyncHttpxClient(verify=_ssl_context[1])
            self._client = anthropic.AsyncAnthropic(
                api_key=key,
                base_url=self.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
                max_retries=0,  # retries are ours, so the user sees them
                **extra,
            )
        return self._client

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def respond(
        self,
        *,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        emit: Callable[[ev.AgentEvent], Awaitable[None]],
        tool_choice: dict[str, Any] | None = None,
        quiet: bool = False,
    ) -> ModelResponse:
        """Stream one assistant message, emitting deltas; retry what is worth retrying.

        ``quiet`` streams without emitting text (for summaries the user does not read live).
        """
        await sdk_imported()
        import anthropic

        client = self._sdk_client()
        attempt = 0
        streamed = False
        api_s = 0.0

        async def emit_tracked(event: ev.AgentEvent) -> None:
            nonlocal streamed
            streamed = True
            await emit(event)

        while True:
            attempt += 1
            if streamed:
                # The last try showed part of an answer; the retry streams it again from the start.
                streamed = False
                await emit(ev.StreamRestarted())
            began = time.monotonic()
            try:
                response = await self._stream_once(client, system, messages, tools, tool_choice, emit_tracked, quiet)
                response.api_ms = int((api_s + time.monotonic() - began) * 1000)
                return response
            except anthropic.APIStatusError as exc:
                api_s += time.monotonic() - began
                # An `event: error` mid-stream arrives as status 200 with the type in the body.
                retryable = exc.status_code in RETRYABLE_STATUS or (
                    exc.status_code == 200 and _error_type(exc) in RETRYABLE_STREAM_ERRORS
                )
                if not retryable or attempt >= self.max_attempts:
                    raise ModelError(_describe_status_error(exc, attempt)) from exc
                delay = _retry_after(exc) or self._backoff(attempt)
                what = _error_type(exc) + (f" ({exc.status_code})" if exc.status_code != 200 else " mid-answer")
            except (
                anthropic.APIConnectionError,
                anthropic.APIResponseValidationError,
                StreamEnded,
                *_transport_errors(),
            ) as exc:  # type: ignore[misc]
                api_s += time.monotonic() - began
                if attempt >= self.max_attempts:
                    raise ModelError(f"Could not reach the model after {attempt} tries: {exc}") from exc
                delay = self._backoff(attempt)
                what = "connection lost"
            await emit(
                ev.Status(
                    f"Model API: {what}; retrying in {delay:.0f} s (attempt {attempt + 1} of {self.max_attempts})"
                )
            )
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        delay = min(30.0, self.base_delay * (2 ** (attempt - 1)))
        return delay * (0.8 + 0.4 * random.random())

    async def _stream_once(self, client, system, messages, tools, tool_choice, emit, quiet) -> ModelResponse:
        import anthropic

        body: dict[str, Any] = dict(
            model=self.model, max_tokens=self.max_tokens, system=system, messages=messages, stream=True
        )
        if tools:
            body["tools"] = tools
        if tool_choice:
            body["tool_choice"] = tool_choice
        # The SDK's request and stream reader, its errors and auth; the events as the JSON the API sent
        # (``cast_to=object``), folded here: the typed events and the snapshot its stream helper rebuilds on
        # every event cost as much as drawing the answer.
        stream = await client.post(
            "/v1/messages", cast_to=object, body=body, stream=True, stream_cls=anthropic.AsyncStream[object]
        )
        folded = MessageAccumulator()
        async with stream:
            async for event in stream:
                try:
                    shown = folded.add(event)
                except (KeyError, TypeError, StreamFormatError) as exc:
                    raise ModelError(f"The model API sent a stream tether cannot read: {exc!r}") from None
                if quiet:
                    continue
                if self.stream_events and event.get("type") in API_EVENTS:
                    await emit(ev.StreamEvent(event))
                if shown is not None:
                    await emit(ev.TextDelta(shown[1]) if shown[0] == "text" else ev.ThinkingDelta(shown[1]))
        if not folded.stopped:
            raise StreamEnded("the model API's stream ended before the message did")
        usage = _usage_dict(folded.usage)
        return ModelResponse(
            id=str(folded.message.get("id", "")),
            model=str(folded.message.get("model", self.model)),
            content=folded.content(),
            stop_reason=folded.stop_reason,
            usage=usage,
            cost_usd=cost_usd(self.model, usage),
        )


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's transport errors: a stream cut mid-answer raises these unwrapped."""
    errors: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


def _usage_dict(usage: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": usage.get("input_tokens") or 0,
        "output_tokens": usage.get("output_tokens") or 0,
        "cache_creation_input_tokens": usage.get("cache_creation_input_tokens") or 0,
        "cache_read_input_tokens": usage.get("cache_read_input_tokens") or 0,
    }


def _error_type(exc: Any) -> str:
    body: dict[str, Any] = exc.body if isinstance(getattr(exc, "body", None), dict) else {}
    found = body.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    return err.get("type") or type(exc).__name__


def _describe_status_error(exc: Any, attempt: int) -> str:
    body: dict[str, Any] = exc.body if isinstance(getattr(exc, "body", None), dict) else {}
    found = body.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    message = err.get("message") or str(exc)
    tries = f" after {attempt} tries" if attempt > 1 else ""
    if exc.status_code == 200:
        return f"The model API failed mid-answer ({_error_type(exc)}){tries}: {message}"
    if exc.status_code == 401:
        return f"The model API refused the API key (401 authentication_error){tries}: {message}"
    return f"The model API answered {exc.status_code} {_error_type(exc)}{tries}: {message}"


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return min(60.0, float(value)) if value else None
    except (AttributeError, ValueError):
        return None
