"""Admin routes: load and unload LoRA adapters on every engine at runtime.

    POST /admin/v1/lora/load   {"lora_name": "...", "lora_path": "/models/adapters/x"}
    POST /admin/v1/lora/unload {"lora_name": "..."}
    Authorization: Bearer $GATEWAY_ADMIN_TOKEN

No admin token configured -> 404 (the routes do not exist). Missing bearer token -> 401,
wrong token -> 403 (compared in constant time). The call is forwarded to every configured
generative engine's /v1/load_lora_adapter or /v1/unload_lora_adapter (vLLM needs
VLLM_ALLOW_RUNTIME_LORA_UPDATING=1); the answer lists each engine's result and is 200 only
if every engine succeeded (502 otherwise). The model catalog is refreshed afterwards, so
the adapter is served -- or gone -- from this process at once and from the others within
their next refresh (or at their first request naming it).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .engines import GENERATE
from .errors import AuthenticationError, InvalidRequest, NotFound, PermissionDenied
from .failures import TRANSPORT_ERRORS
from .runtime import Runtime
from .validation import read_json_body

_ADAPTER_BODY_LIMIT = 16_384


async def load_adapter(request: Request) -> Response:
    return await _forward(request, "/v1/load_lora_adapter", ("lora_name", "lora_path"))


async def unload_adapter(request: Request) -> Response:
    return await _forward(request, "/v1/unload_lora_adapter", ("lora_name",))


async def _forward(request: Request, engine_path: str, fields: tuple[str, ...]) -> Response:
    rt: Runtime = request.state.runtime
    _check_admin(rt, request.headers.get("authorization"))
    body, _ = await read_json_body(request, _ADAPTER_BODY_LIMIT)
    for name in fields:
        if not isinstance(body.get(name), str) or not body[name]:
            raise InvalidRequest(f"{name} must be a non-empty string.", param=name)
    payload = orjson.dumps({name: body[name] for name in fields})
    # Embedding engines (vLLM's pooling runner) serve no adapters.
    targets = [e for e in rt.engines.engines if e.kind == GENERATE]
    results = await asyncio.gather(*(_call(rt, e.url + engine_path, payload) for e in targets))
    await rt.catalog.refresh()
    engines = {e.url: result for e, result in zip(targets, results, strict=True)}
    ok = all(result["status"] == 200 for result in results)
    answer = {"lora_name": body["lora_name"], "ok": ok, "engines": engines}
    return Response(orjson.dumps(answer), status_code=200 if ok else 502, media_type="application/json")


routes = [Route("/admin/v1/lora/load", load_adapter, methods=["POST"]),
          Route("/admin/v1/lora/unload", unload_adapter, methods=["POST"])]


def _check_admin(rt: Runtime, authorization: str | None) -> None:
    expected = rt.settings.admin_token
    if expected is None or not expected.get_secret_value():
        raise NotFound("Not found.", code="not_found")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Admin routes need 'Authorization: Bearer <admin token>'.", reason="missing",
                                  code="invalid_admin_token")
    if not hmac.compare_digest(token.strip().encode(), expected.get_secret_value().encode()):
        raise PermissionDenied("Invalid admin token.", code="invalid_admin_token")


async def _call(rt: Runtime, url: str, payload: bytes) -> dict[str, Any]:
    try:
        async with rt.http.post(url, data=payload, headers={"content-type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=120)) as response:
            text = (await response.read()).decode(errors="replace")
            return {"status": response.status, "detail": text[:2000]}
    except TRANSPORT_ERRORS as exc:
        return {"status": 0, "detail": f"{type(exc).__name__}: {exc}"[:2000]}
