"""Forwarding a completion request to an engine and relaying its answer.

- `send()` posts the (validated, edited) body and returns once the engine's response
  headers are in. A refused connection is a fast 503 with Retry-After (not billed), a timeout
  a 504. A connection lost before any answer is sent once more (engines.post); an engine that
  drops a request before its answer is complete is a 503 `engine_unavailable` with Retry-After
  too (billed as cut short): nothing reached the client, and retrying is what it should do.
- `HangUpWatch` (hangup.py) covers a non-streaming request's wait (in `send()`, where vLLM keeps it
  until all is generated, and in `buffered_response()`): if the client hangs up, the
  upstream connection is closed (vLLM aborts a request whose client is gone) instead of
  generating for nobody; within 0.2 s of the request's start, at once after that.
- `buffered_response()` relays a non-streaming answer once it is complete, up to
  `max_buffered_response_bytes` (a larger one is a 502, not held in memory).
- `streaming_response()` relays Server-Sent Events as they arrive: every complete event is
  passed on the moment it is read, in the bytes the engine sent (event-aligned: a partial
  event waits for its end, so events are never split or merged differently than upstream
  wrote them, and nothing is held back beyond that). On the way it notices the usage chunk
  (for reconciliation), `data: [DONE]`, and failures:
    * client disconnect -> the upstream response is closed at once, so vLLM aborts;
    * engine failure mid-stream (connection lost, timeout, end without [DONE]) -> one
      `data: {"error": {...}}` event and NO `data: [DONE]`, so no client mistakes a
      truncated answer for a complete one.
  The gateway always asks vLLM for `stream_options.include_usage`; when the client did not
  ask for it, the extra usage chunk (empty `choices`) is removed from what the client sees,
  so the stream is exactly what the client asked for. (Event handling: sse.py; what each
  engine failure is called: failures.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp
import anyio
import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from . import engines
from .accounting import Books
from .engines import Engine
from .errors import UpstreamError
from .failures import TRANSPORT_ERRORS, EngineFailure, FailureKind, classify, classify_status
from .sse import SseEvents, error_event

_JSON = json.JSONDecoder()


async def send(session: aiohttp.ClientSession, engine: Engine, path: str, body: dict[str, Any],
               timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
    data = orjson.dumps(body)
    try:
        # The request id is not forwarded: vLLM would adopt it as its own, and two clients
        # reusing one X-Request-ID would then collide inside the engine.
        return await engines.post(session, engine.url + path, data, timeout)
    except TRANSPORT_ERRORS as error:
        raise _failure(classify(error)) from None


def _failure(kind: FailureKind) -> EngineFailure:
    """The client's error for an engine that failed before any of its answer was relayed."""
    if kind is FailureKind.CONNECT:
        # Refused, or no connection within sock_connect: the engine never received the request.
        return EngineFailure("The inference engine is unreachable; retry shortly.", kind=kind, status=503,
                             code="engine_unavailable", headers={"Retry-After": "1"})
    if kind is FailureKind.TIMEOUT:
        return EngineFailure("The inference engine did not answer in time.", kind=kind, status=504,
                             code="upstream_timeout")
    # The engine dropped the request before its answer was complete (it died working on it, or
    # the resend of a lost connection was lost too): nothing reached the client, so this is a
    # 503 to retry, like a refused connection -- but the engine received the request, so it is
    # billed as cut short (and counts against the engine's breaker).
    return EngineFailure("The inference engine dropped the request before answering; retry shortly.",
                         kind=kind, status=503, code="engine_unavailable", headers={"Retry-After": "1"})


def _engine_error(upstream_status: int, payload: bytes) -> EngineFailure:
    try:
        detail = orjson.loads(payload)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        detail = f"HTTP {upstream_status}"
    return EngineFailure(f"The inference engine failed: {detail}", kind=FailureKind.STATUS_5XX)


async def buffered_response(upstream: aiohttp.ClientResponse, books: Books, headers: dict[str, str],
                            limit: int) -> Response:
    """The engine's whole answer, relayed once complete; closes the books after it is sent.
    An answer over `limit` bytes is not held: 502 `response_too_large` (the engine did nothing
    wrong, so its breaker hears a success)."""
    try:
        payload = await _read_bounded(upstream, limit)
    except ResponseTooLarge:
        upstream.close()
        if upstream.status < 500:
            books.engine_answered()
        raise
    except TRANSPORT_ERRORS as error:
        upstream.close()
        raise _failure(classify(error)) from None
    except asyncio.CancelledError:
        upstream.close()            # the client left (ClientWatch): the engine must see it too
        raise
    if classify_status(upstream.status):
        raise _engine_error(upstream.status, payload)
    books.engine_answered()
    return Response(payload, upstream.status, headers=headers, media_type="application/json",
                    background=BackgroundTask(_close_after_sending, books, upstream.status, payload))


class ResponseTooLarge(UpstreamError):
    code = "response_too_large"


async def _read_bounded(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    length = upstream.content_length         # vLLM sends one with every JSON answer
    if length is not None:
        if length > limit:
            raise _too_large(limit)
        return await upstream.read()
    chunks, size = [], 0
    async for chunk in upstream.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(f"The answer is larger than this gateway relays without streaming ({limit} bytes). "
                            "For completions, ask for fewer or shorter choices (n, max_tokens, logprobs) or stream it "
                            "(stream: true); for embeddings, send fewer inputs per request or use "
                            "encoding_format: base64.")


async def _close_after_sending(books: Books, status: int, payload: bytes) -> None:
    try:
        # uvloop writes to sockets at the end of a loop iteration: yielding once first lets the
        # answer leave before its usage is read and the books are closed, instead of after.
        await asyncio.sleep(0)
    finally:
        await books.close(status, usage=_usage(payload) if status == 200 else None)


def _usage(payload: bytes) -> dict[str, Any] | None:
    """The answer's top-level `usage`, parsed from its key to the end of that object only: vLLM
    writes it after `choices` (which can be megabytes of logprobs), and the last `"usage"` key is
    it (inside a JSON string the quotes would be escaped, so no text can look like a key)."""
    end = len(payload)
    while (start := payload.rfind(b'"usage"', 0, end)) >= 0:
        rest = payload[start + 7:start + 64].lstrip()
        if rest.startswith(b":"):
            try:
                usage, _ = _JSON.raw_decode(payload[start + 7:].decode().lstrip().removeprefix(":").lstrip())
            except ValueError:      # UnicodeDecodeError included
                return None
            return usage if isinstance(usage, dict) else None
        end = start                 # "usage" as a value, not a key: look further back
    return None


class _RelayResponse(StreamingResponse):
    """A StreamingResponse that always finalises its body iterator.

    Starlette stops iterating when the client disconnects; if that happens while the relay
    is suspended at a `yield` rather than reading upstream, the relay would only be closed
    whenever the garbage collector gets to it. Closing it here runs its `finally` at once
    (upstream closed, books closed)."""

    def __init__(self, relay: AsyncGenerator[bytes, None], *, status_code: int, headers: dict[str, str],
                 media_type: str) -> None:
        super().__init__(relay, status_code=status_code, headers=headers, media_type=media_type)
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._relay.aclose()


def streaming_response(upstream: aiohttp.ClientResponse, books: Books, headers: dict[str, str],
                       strip_usage: bool, set_outcome: Callable[[int], None]) -> StreamingResponse:
    return _RelayResponse(_relay(upstream, books, strip_usage, set_outcome), status_code=200,
                             headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
                             media_type="text/event-stream")


async def _relay(upstream: aiohttp.ClientResponse, books: Books, strip_usage: bool,
                 set_outcome: Callable[[int], None]) -> AsyncGenerator[bytes, None]:
    events = SseEvents(strip_usage)
    status, failure = 499, None          # until proven otherwise: the client went away
    try:
        try:
            async for chunk in upstream.content.iter_any():
                if not books.answered:
                    books.engine_answered()          # the first byte: the breaker's verdict
                out = events.feed(chunk)
                if out:
                    yield out
            if events.done:
                status = 200
            else:
                failure = FailureKind.STREAM_BROKEN
        except TRANSPORT_ERRORS as exc:
            failure = classify(exc)
        if failure is not None:
            if failure is FailureKind.TIMEOUT:
                status, error = 504, _failure(failure)
            else:
                status, error = 502, EngineFailure(
                    "The inference engine failed in the middle of the response; the output is incomplete.",
                    kind=failure)
            yield error_event(error)
    finally:
        # Closing (not releasing) drops the connection: if the engine is still generating,
        # this is what tells vLLM to abort.
        if status != 200:
            upstream.close()
        else:
            upstream.release()
        set_outcome(status)
        await books.close_shielded(status, usage=events.usage, failure=failure, chunks=events.count)
