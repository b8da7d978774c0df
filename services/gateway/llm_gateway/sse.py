"""The engine's Server-Sent Events as the relay sees them: where each event ends, the usage
chunk, the final `data: [DONE]`, and the error event the gateway writes when a stream fails.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import GatewayError

# The end of a vLLM stream: this whole event, never just these bytes somewhere (a model can write
# "data: [DONE]" in its text; JSON escapes its newlines, so it can never be a whole event).
_DONE_EVENT = b"data: [DONE]\n\n"
_USAGE = b'"usage":{'


def error_event(error: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


class SseEvents:
    """Cuts the engine's byte stream into complete SSE events (vLLM ends each with a blank line).

    Hand-rolled rather than an SSE library (httpx-sse, sse-starlette's parser): those yield
    parsed events, and the relay must pass the engine's bytes on exactly as they came, in the
    reads they came in; all it needs is where events end, the usage chunk and [DONE]."""

    __slots__ = ("_pending", "_strip_usage", "count", "done", "usage")

    def __init__(self, strip_usage: bool):
        self._pending = b""
        self._strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
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
