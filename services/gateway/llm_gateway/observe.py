"""Per-request observation: request id, metrics and the one access log line.

A plain ASGI middleware (no BaseHTTPMiddleware: it would buffer and cost a task per request).
It gives every request an `Observation` in ``scope["state"]["obs"]`` (routes reach it as
``request.state.obs``), echoes the request id in ``X-Request-ID``, and when the response is
complete (streams included) records:
- gateway_requests_total{route,status,tier,model}, gateway_request_duration_seconds{route},
  gateway_time_to_first_byte_seconds{route}; for proxied routes gateway_added_latency_seconds
  {route} = time to the response start minus the time spent waiting for the engine;
- one JSON access line (request id, route, status, duration, key id, tier, model; never
  bodies or keys). Health, readiness and metrics requests are logged at DEBUG only.

`route` is the route's path for the gateway's own routes and "other" for anything else, so a
scanner probing random paths cannot grow the metrics' label sets.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics

access_log = logging.getLogger("llm_gateway.access")

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/healthz", "/readyz",
          "/admin/v1/lora/load", "/admin/v1/lora/unload")
_QUIET = frozenset(("/healthz", "/readyz"))
_MAX_REQUEST_ID = 128


class Observation:
    __slots__ = (
        "client_request_id",
        "key_id",
        "model",
        "outcome",
        "request_id",
        "route",
        "status",
        "t0",
        "t_first_byte",
        "t_start",
        "tier",
        "upstream_seconds",
    )

    def __init__(self, request_id: str, route: str, client_request_id: str | None = None):
        self.request_id = request_id                  # generated here for every request: unique
        self.client_request_id = client_request_id    # the client's X-Request-ID, if usable
        self.route = route
        self.t0 = time.perf_counter()
        self.status = 0
        self.t_start = self.t_first_byte = 0.0
        self.upstream_seconds: float | None = None  # set by proxied routes: waiting for the engine's headers
        self.outcome: int | None = None               # a stream's real end: 499 client gone, 502/504 engine failed
        self.tier = "none"
        self.key_id: str | None = None
        self.model: str | None = None

    def set_outcome(self, status: int) -> None:
        self.outcome = status


class _RouteMetrics:
    """Metric children for one route label, created once (labels() costs a lock and a lookup)."""

    def __init__(self, route: str):
        self.route = route
        self.duration = metrics.REQUEST_DURATION.labels(route)
        self.ttfb = metrics.TIME_TO_FIRST_BYTE.labels(route)
        self.added = metrics.ADDED_LATENCY.labels(route)
        self._requests: dict[tuple[str, str, str], Counter] = {}

    def count(self, status: str, tier: str, model: str) -> None:
        child = self._requests.get((status, tier, model))
        if child is None:
            child = self._requests[(status, tier, model)] = metrics.REQUESTS.labels(self.route, status, tier, model)
        child.inc()


class RequestObserver:
    def __init__(self, app: ASGIApp):
        self.app = app
        self._metrics = {route: _RouteMetrics(route) for route in (*ROUTES, "other")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        client_id = _client_request_id(scope)
        # 128 random bits, as a uuid4 has, without building a UUID.
        obs = Observation(os.urandom(16).hex(), path if path in self._metrics else "other", client_id)
        scope.setdefault("state", {})["obs"] = obs
        # The client gets its own id back (it correlates by it); the gateway's when it sent none.
        id_header = (b"x-request-id", (client_id or obs.request_id).encode())

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                obs.status = message["status"]
                obs.t_start = time.perf_counter()
                message["headers"] = [*message.get("headers", ()), id_header]
            elif not obs.t_first_byte and message.get("body"):
                obs.t_first_byte = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self._record(obs)

    def _record(self, obs: Observation) -> None:
        end = time.perf_counter()
        status = obs.outcome or obs.status or 500
        route_metrics = self._metrics[obs.route]
        route_metrics.count(str(status), obs.tier, obs.model or "")
        route_metrics.duration.observe(end - obs.t0)
        if obs.t_start:
            route_metrics.ttfb.observe((obs.t_first_byte or obs.t_start) - obs.t0)
            if obs.upstream_seconds is not None:
                route_metrics.added.observe(max(0.0, obs.t_start - obs.t0 - obs.upstream_seconds))
        level = logging.DEBUG if obs.route in _QUIET else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(level, "request", extra={
                "request_id": obs.request_id, "client_request_id": obs.client_request_id, "route": obs.route,
                "status": status,
                "duration_ms": round((end - obs.t0) * 1000, 2), "key_id": obs.key_id, "tier": obs.tier,
                "model": obs.model})


def _client_request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID when it is short and printable (it ends up in logs), else None.
    Never an identity: a client may send the same one on every request."""
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.decode().isprintable():
                return value.decode()
            break
    return None
