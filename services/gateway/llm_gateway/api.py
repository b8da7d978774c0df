"""The OpenAI-compatible routes. `_complete` is the whole request path, top to bottom:

    authenticate -> validate -> reserve (limiter) -> count what validation left open (engine
    /tokenize) -> admit (in-flight cap) -> pick an engine -> proxy / stream -> close the books
    (reconcile tokens, release, record usage)

Nothing reaches an engine before the limiter has admitted the request: a key over its request
limit costs the engines nothing, whatever its body.

Metrics and the access line are observed around it (observe.py); errors become OpenAI-shaped
responses in one place (app.py).
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import proxy
from .errors import GatewayError
from .failures import EngineFailure
from .hangup import ClientGone
from .observe import Observation
from .runtime import Runtime
from .validation import CHAT, COMPLETION, EMBEDDING, read_json_body


async def chat_completions(request: Request) -> Response:
    return await _complete(request, CHAT, "/v1/chat/completions")


async def completions(request: Request) -> Response:
    return await _complete(request, COMPLETION, "/v1/completions")


async def embeddings(request: Request) -> Response:
    # The same path: an embeddings request is never streamed, and has no completion tokens.
    return await _complete(request, EMBEDDING, "/v1/embeddings")


async def _complete(request: Request, kind: str, path: str) -> Response:
    rt: Runtime = request.state.runtime
    obs: Observation = request.state.obs

    key = await rt.keys.authenticate(request.headers.get("authorization"), request)
    obs.key_id, obs.tier = key.id, key.tier

    body, body_size = await read_json_body(request, rt.settings.max_body_bytes)
    plan = await rt.validator.plan(body, body_size, key, kind)
    obs.model = plan.served.id
    rt.priorities.apply(body, key.tier)

    reservation = await rt.limiter.reserve(key, obs.request_id, plan.reserved_tokens)
    books = rt.accounting.open(key, plan, reservation, obs.request_id, obs.client_request_id)
    try:
        if not plan.settled:
            with rt.hangups.watch(request.receive):      # a client that leaves stops the counting
                await rt.validator.settle(plan, body)
        await books.admit()

        engine = books.pick_engine()
        sent_at = time.perf_counter()
        if plan.stream:
            upstream = await proxy.send(rt.http, engine, path, body, rt.upstream_timeout)
            books.engine_reached()
            if upstream.status == 200:
                obs.upstream_seconds = time.perf_counter() - sent_at   # to the headers; the relay is ours
                return proxy.streaming_response(upstream, books, reservation.headers,
                                                strip_usage=not plan.client_wants_usage, set_outcome=obs.set_outcome)
            response = await proxy.buffered_response(upstream, books, reservation.headers,   # an error answer
                                                     rt.settings.max_buffered_response_bytes)
        else:
            with rt.hangups.watch(request.receive):     # a hang-up while vLLM generates ends the wait
                upstream = await proxy.send(rt.http, engine, path, body, rt.upstream_timeout)
                books.engine_reached()
                response = await proxy.buffered_response(upstream, books, reservation.headers,
                                                         rt.settings.max_buffered_response_bytes)
        if upstream.status == 404:
            rt.catalog.refresh_soon()   # the engine no longer serves it (e.g. adapter unloaded elsewhere)
        obs.upstream_seconds = time.perf_counter() - sent_at
        return response
    except ClientGone:
        obs.set_outcome(499)
        await books.close_shielded(499)
        return Response(status_code=499)  # nobody is listening; keeps the server from logging an error
    except GatewayError as error:
        await books.close_shielded(error.status, failure=error.kind if isinstance(error, EngineFailure) else None)
        raise
    except BaseException:
        await books.close_shielded(500)
        raise


async def list_models(request: Request) -> Response:
    rt: Runtime = request.state.runtime
    obs: Observation = request.state.obs
    key = await rt.keys.authenticate(request.headers.get("authorization"), request)
    obs.key_id, obs.tier = key.id, key.tier
    cards = [served.public_card for served in rt.catalog.all() if key.allows(served.id)]
    return Response(orjson.dumps({"object": "list", "data": cards}), media_type="application/json")


# Plain Starlette routes: FastAPI's per-route machinery (dependency solving, body models)
# costs ~100 us a request and these routes use none of it.
routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
