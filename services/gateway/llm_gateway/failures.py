"""What went wrong talking to an engine: the one map from transport errors and statuses to the
gateway's failure kinds (as httpx's _exceptions.py does for its own).

A kind decides three things: the gateway_upstream_errors_total{kind} label (the Enum's values
are the label values, a contract with grafana/ and prometheus/), what the engine's circuit
breaker and health learn (EnginePool.done: CONNECT also marks it down at once), and billing
(CONNECT: the engine never received the request; Books.close).
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Any

import aiohttp

from .errors import UpstreamError


class FailureKind(StrEnum):
    CONNECT = "connect"              # refused, unreachable or no connection in time: nothing was sent
    TIMEOUT = "timeout"              # no answer (or no next read of it) in time
    STATUS_5XX = "status_5xx"        # the engine answered with a server error, or with nonsense
    STREAM_BROKEN = "stream_broken"  # a connection lost mid-request, or a stream ended without [DONE]


# Everything a call to an engine raises when the engine (or the way to it) fails; classify() names it.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def classify(error: BaseException) -> FailureKind:
    """The kind of a transport error (one of TRANSPORT_ERRORS) from a call to an engine.

    Order matters: aiohttp's connect errors are OSErrors and its connect timeout a TimeoutError,
    and TimeoutError is itself an OSError."""
    if isinstance(error, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return FailureKind.CONNECT
    if isinstance(error, asyncio.TimeoutError):
        return FailureKind.TIMEOUT
    return FailureKind.STREAM_BROKEN


def classify_status(status: int) -> FailureKind | None:
    """The kind of an engine's HTTP status: a failure only for a server error."""
    return FailureKind.STATUS_5XX if status >= 500 else None


class EngineFailure(UpstreamError):
    """The engine failed this request; `kind` labels gateway_upstream_errors_total."""

    def __init__(self, message: str, *, kind: FailureKind, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.kind = kind
