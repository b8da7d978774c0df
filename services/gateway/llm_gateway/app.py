"""The gateway's ASGI application (one per worker process; `python -m llm_gateway` runs them).

Routes: api.py (the OpenAI-compatible routes and the request path), readiness.py (/healthz,
/readyz), lora_admin.py (/admin/v1/lora/*). Metrics are served on their own port by the
parent process (__main__.py), never by this app, so the edge cannot expose them.

Errors: every error leaves here in OpenAI's shape {"error": {message, type, param, code}}:
GatewayError subclasses with their own status, FastAPI validation errors as 400, unknown
routes and methods as 404/405, a client that hangs up mid-upload as 499 (like any hang-up), and
anything unexpected as a 500 (logged with its request id).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar, cast

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ExceptionHandler

from . import api, lora_admin, readiness
from .errors import GatewayError, InvalidRequest
from .logging_setup import setup_logging
from .observe import RequestObserver
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    setup_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Runtime]]:
        runtime = await Runtime.start(settings)
        # Everything built so far lives as long as the worker: keep it out of the collector's
        # scans, and collect young objects less often (each request allocates thousands).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        log.info("gateway worker ready", extra={"engines": settings.engines, "port": settings.port})
        try:
            yield {"runtime": runtime}   # reaches every request as request.state.runtime
        finally:
            await runtime.close()
            _forget_process_gauges()
            log.info("gateway worker stopped")

    app = FastAPI(title="llm-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.router.routes.extend([*api.routes, *readiness.routes, *lora_admin.routes])
    _handle(app, GatewayError, _gateway_error)
    _handle(app, RequestValidationError, _validation_error)
    _handle(app, HTTPException, _http_error)
    _handle(app, ClientDisconnect, _client_gone)
    _handle(app, Exception, _unexpected_error)
    app.add_middleware(RequestObserver)
    return app


_E = TypeVar("_E", bound=Exception)


def _handle(app: FastAPI, exc_class: type[_E], handler: Callable[[Request, _E], Awaitable[Response]]) -> None:
    """app.add_exception_handler, typed: Starlette declares every handler as taking any
    Exception, but calls each only with instances of the class it was registered for."""
    app.add_exception_handler(exc_class, cast(ExceptionHandler, handler))


def _respond(error: GatewayError) -> Response:
    return Response(orjson.dumps(error.body()), status_code=error.status, headers=error.headers,
                    media_type="application/json")


async def _gateway_error(request: Request, exc: GatewayError) -> Response:
    return _respond(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return _respond(InvalidRequest(f"Invalid request: {exc.errors()}", code="invalid_request"))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    messages = {404: f"Unknown route {request.method} {request.url.path}.",
                405: f"Method {request.method} is not allowed on {request.url.path}."}
    message = messages.get(exc.status_code, str(exc.detail))
    headers = getattr(exc, "headers", None)
    if exc.status_code < 500:
        return _respond(InvalidRequest(message, status=exc.status_code, headers=headers,
                                       code={404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)))
    return _respond(GatewayError(message, status=exc.status_code, headers=headers))


async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
    # The client hung up while its body was being read: nobody to answer, nothing went wrong
    # here. 499 like every other hang-up (nginx's "client closed request").
    return Response(status_code=499)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    obs = getattr(request.state, "obs", None)
    log.error("unhandled error", exc_info=exc, extra={"request_id": getattr(obs, "request_id", None)})
    return _respond(GatewayError("The gateway had an internal error.", code="internal_error"))


def _forget_process_gauges() -> None:
    """Drop this process's live gauges (in-flight) from the shared metrics directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
