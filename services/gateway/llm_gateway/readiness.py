"""Liveness and readiness. Neither is authenticated, rate limited or admission controlled.

- GET /healthz: the process and its event loop answer. Touches nothing else, so it stays
  fast under any load (a slow /healthz would get a busy but healthy gateway restarted).
- GET /readyz: this replica can serve: PostgreSQL answers, Redis answers (required only in
  fail-closed limiter mode: with the local fallback the gateway serves without it, so a
  Redis outage must not pull every replica out of the load balancer), and at least one
  engine passed its last health check. 503 with the details otherwise.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.routing import Route
from starlette.responses import Response

from .runtime import Runtime

_OK = orjson.dumps({"status": "ok"})


async def healthz(request: Request) -> Response:
    return Response(_OK, media_type="application/json")


async def readyz(request: Request) -> Response:
    rt: Runtime = request.state.runtime
    postgres, redis = await asyncio.gather(rt.check_postgres(), rt.limiter.ping())
    engines = [e.url for e in rt.engines.healthy()]
    checks = {
        "postgres": "up" if postgres else "down",
        "redis": "up" if redis else "down",
        "engines": {e.url: ("healthy" if e.healthy else "unhealthy") for e in rt.engines.engines},
    }
    redis_required = rt.settings.limiter_failure_mode == "closed"
    ready = postgres and (redis or not redis_required) and bool(engines)
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
