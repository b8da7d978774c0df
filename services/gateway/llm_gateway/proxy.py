"""Forwarding a completion request to an engine and relaying its answer.

- `send()` posts the (validated, edited) body and returns once the engine's response
  headers are in. A refused connection is a fast 503 with Retry-After (not billed), a timeout
  a 504. A connection lost before any answer is sent once more (engines.post); an engine that
  drops a request before its answer is complete is a 503 `engine_unavailable` with Retry-After
  too (billed as cut short): nothing reached the client, and retrying is what it should do.
- `HangUpWatch` covers a non-streaming request's wait (in `send()`, where vLLM keeps it
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
  so the stream is exactly what the client asked for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import anyio
import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from . import engines
from .accounting import Books
from .engines import Engine
from .errors import GatewayError, UpstreamError

# The end of a vLLM stream: this whole event, never just these bytes somewhere (a model can write
# "data: [DONE]" in its text; JSON escapes its newlines, so it can never be a whole event).
_DONE_EVENT = b"data: [DONE]\n\n"
_USAGE = b'"usage":{'
_JSON = json.JSONDecoder()


class EngineFailure(UpstreamError):
    """The engine failed this request; `kind` labels gateway_upstream_errors_total."""

    def __init__(self, message: str, *, kind: str, **kw):
        super().__init__(message, **kw)
        self.kind = kind


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def send(session: aiohttp.ClientSession, engine: Engine, path: str, body: dict,
               timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
    data = orjson.dumps(body)
    try:
        # The request id is not forwarded: vLLM would adopt it as its own, and two clients
        # reusing one X-Request-ID would then collide inside the engine.
        return await engines.post(session, engine.url + path, data, timeout)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        # Refused, or no connection within sock_connect: the engine never received the request.
        raise EngineFailure("The inference engine is unreachable; retry shortly.", kind="connect", status=503,
                            code="engine_unavailable", headers={"Retry-After": "1"}) from None
    except asyncio.TimeoutError:
        raise _timeout() from None
    except (aiohttp.ClientError, OSError):
        raise _dropped() from None


def _dropped() -> EngineFailure:
    """The engine dropped the request before its answer was complete (it died working on it, or
    the resend of a lost connection was lost too): nothing reached the client, so this is a
    503 to retry, like a refused connection -- but the engine received the request, so it is
    billed as cut short ("stream_broken" counts against the engine's breaker)."""
    return EngineFailure("The inference engine dropped the request before answering; retry shortly.",
                         kind="stream_broken", status=503, code="engine_unavailable", headers={"Retry-After": "1"})


def _timeout() -> EngineFailure:
    return EngineFailure("The inference engine did not answer in time.", kind="timeout", status=504,
                         code="upstream_timeout")


def _engine_error(upstream_status: int, payload: bytes) -> EngineFailure:
    try:
        detail = orjson.loads(payload)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        detail = f"HTTP {upstream_status}"
    return EngineFailure(f"The inference engine failed: {detail}", kind="status_5xx")


class HangUpWatch:
    """Notices a client hanging up while its non-streaming request waits (one per worker).

    vLLM sends a non-streaming answer's headers only once it has generated all of it, so such
    a request spends its life waiting in `send()`. If the client goes away meanwhile, the wait
    is cancelled (aiohttp closes the upstream connection, so vLLM aborts the request) and the
    block ends in ClientGone. (Streams are watched by their relay instead.)

    Watching takes a task per request, which cost 5-7 % of the maximum rate on a 2-core machine
    for answers that arrive before a hang-up could matter. So a request only registers on
    entry, and `run()` (a background loop) starts the watcher of every request that has been
    waiting for `grace_seconds`: a generating vLLM request. A hang-up is noticed at most twice
    the grace after the request began, and at once after that.

        with hangups.watch(request.receive):
            upstream = await send(...)
            response = await buffered_response(...)
    """

    def __init__(self, grace_seconds: float = 0.1):
        self.grace_seconds = grace_seconds
        self._waiting: set[ClientWatch] = set()

    def watch(self, receive: Receive) -> "ClientWatch":
        return ClientWatch(receive, self._waiting)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.grace_seconds)
            if self._waiting:
                began_before = time.monotonic() - self.grace_seconds
                for watch in [w for w in self._waiting if w.since <= began_before]:
                    watch.start()


class ClientWatch:
    """One request's watch (see HangUpWatch): registered on entry, given a watcher task by
    HangUpWatch.run() if the block lasts, unregistered on exit."""

    __slots__ = ("_receive", "_waiting", "_task", "_watcher", "_active", "since", "gone")

    def __init__(self, receive: Receive, waiting: set["ClientWatch"]):
        self._receive = receive
        self._waiting = waiting
        self._task: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._active = False
        self.since = 0.0
        self.gone = False

    @property
    def watching(self) -> bool:
        return self._watcher is not None

    def __enter__(self) -> "ClientWatch":
        self._task = asyncio.current_task()
        self._active = True
        self.since = time.monotonic()
        self._waiting.add(self)
        return self

    def start(self) -> None:
        self._waiting.discard(self)
        if self._active and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        # Only while the block runs: then the request's task is suspended on one of the block's
        # awaits, and that is where the cancellation lands.
        if self._active:
            self._task.cancel()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._active = False
        self._waiting.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()
        if exc_type is asyncio.CancelledError and self.gone:
            self._task.uncancel()      # our own cancellation, consumed here
            raise ClientGone() from None


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
    except asyncio.TimeoutError:
        upstream.close()
        raise _timeout() from None
    except (aiohttp.ClientError, OSError):
        upstream.close()
        raise _dropped() from None
    except asyncio.CancelledError:
        upstream.close()            # the client left (ClientWatch): the engine must see it too
        raise
    if upstream.status >= 500:
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
                            "Ask for fewer or shorter choices (n, max_tokens, logprobs), or stream it (stream: true).")


async def _close_after_sending(books: Books, status: int, payload: bytes) -> None:
    try:
        # uvloop writes to sockets at the end of a loop iteration: yielding once first lets the
        # answer leave before its usage is read and the books are closed, instead of after.
        await asyncio.sleep(0)
    finally:
        await books.close(status, usage=_usage(payload) if status == 200 else None)


def _usage(payload: bytes) -> dict | None:
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

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


def streaming_response(upstream: aiohttp.ClientResponse, books: Books, headers: dict[str, str],
                       strip_usage: bool, set_outcome: Callable[[int], None]) -> StreamingResponse:
    return _RelayResponse(_relay(upstream, books, strip_usage, set_outcome), status_code=200,
                             headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
                             media_type="text/event-stream")


async def _relay(upstream: aiohttp.ClientResponse, books: Books, strip_usage: bool,
                 set_outcome: Callable[[int], None]) -> AsyncIterator[bytes]:
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
                failure = "stream_broken"
        except asyncio.TimeoutError:
            failure = "timeout"
        except (aiohttp.ClientError, OSError):
            failure = "stream_broken"
        if failure is not None:
            status = 504 if failure == "timeout" else 502
            error = _timeout() if failure == "timeout" else EngineFailure(
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


def error_event(error: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


class SseEvents:
    """Cuts the engine's byte stream into complete SSE events (vLLM ends each with a blank line).

    Hand-rolled rather than an SSE library (httpx-sse, sse-starlette's parser): those yield
    parsed events, and the relay must pass the engine's bytes on exactly as they came, in the
    reads they came in; all it needs is where events end, the usage chunk and [DONE]."""

    __slots__ = ("_pending", "_strip_usage", "usage", "done", "count")

    def __init__(self, strip_usage: bool):
        self._pending = b""
        self._strip_usage = strip_usage
        self.usage: dict | None = None
        self.done = False
        self.count = 0           # events seen: about one per generated token and choice

    def feed(self, chunk: bytes) -> bytes:
        """The complete events available after `chunk`, to pass on as they are."""
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[:end + 2], data[end + 2:]
        self.count += complete.count(b"\n\n")
        if _USAGE in complete:
            complete = self._take_usage(complete)
        # `complete` starts at an event boundary and ends with one: [DONE] is its last event.
        self.done = complete.endswith(_DONE_EVENT) and (
            len(complete) == len(_DONE_EVENT) or complete.endswith(b"\n\n" + _DONE_EVENT))
        return complete

    def _take_usage(self, complete: bytes) -> bytes:
        kept = []
        for event in complete.split(b"\n\n")[:-1]:
            if _USAGE in event and event.startswith(b"data: {"):
                try:
                    payload = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    payload = None
                if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                    self.usage = payload["usage"]
                    if self._strip_usage and not payload.get("choices"):
                        continue  # the usage-only chunk the client did not ask for
            kept.append(event + b"\n\n")
        return b"".join(kept)
