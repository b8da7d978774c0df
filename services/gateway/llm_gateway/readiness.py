"""Liveness and readiness. Neither is authenticated, rate limited or admission controlled.

- GET /healthz: the process and its event loop answer. Touches nothing else, so it stays
  fast under any load (a slow /healthz would get a busy but healthy gateway restarted).
- GET /readyz: this replica can serve: PostgreSQL answers, Redis answers (required only in
  fail-closed limiter mode: with the local fallback the gateway serves without it, so a
  Redis outage must not pull every replica out of the load balancer), and at least one
  engine passed its last health check. 200 or 503 with {"status": ...} and nothing else:
  the route is reachable through the edge, so it names no dependency and no internal URL.
  Which dependency is down is on the metrics port, never behind the edge
  (gateway_dependency_up{dependency}, gateway_engine_healthy{upstream}).
  The check runs at most once a second per worker (Runtime.readiness), on a Redis client of
  its own, so a burst of probes can neither load the dependencies nor starve the limiter.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .runtime import Runtime

_OK = orjson.dumps({"status": "ok"})


async def healthz(request: Request) -> Response:
    return Response(_OK, media_type="application/json")


_READY = orjson.dumps({"status": "ready"})
_NOT_READY = orjson.dumps({"status": "not ready"})


async def readyz(request: Request) -> Response:
    rt: Runtime = request.state.runtime
    if (await rt.readiness()).ready:
        return Response(_READY, media_type="application/json")
    return Response(_NOT_READY, status_code=503, media_type="application/json")


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
