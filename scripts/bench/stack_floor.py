"""The stack's floor: the gateway's hops with none of its logic, as a reference for its overhead.

An ASGI app on the gateway's own stack (uvicorn with uvloop and httptools, a plain Starlette
route, redis-py, a pooled aiohttp session) that does per request only what no gateway of
this design can skip:
  read the body -> one EVALSHA of the real limiter_v1.lua (same keys and arguments as the
  gateway's reserve) -> POST to the engine -> relay the answer -> settle after sending
  (limiter_v1_settle.lua, off the response path, as the gateway does).
No key check, no validation, admission, metrics, logs or error handling. The difference
between the gateway and this floor is what the gateway's own code costs; the difference
between this floor and a direct call is what the hops (client -> proxy -> Redis -> proxy ->
engine -> proxy -> client) cost on the machine. With FLOOR_REDIS=0 (with_redis=False) the
Redis call is left out too: a bare proxy, which shows what the Redis hop alone costs.

    FLOOR_UPSTREAM=http://127.0.0.1:PORT uvicorn scripts.bench.stack_floor:app --workers 2 ...
    with StackFloor(upstream_url, log_dir, workers=2, with_redis=True) as floor: floor.url
"""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.limiter_scripts import limiter_keys, load_script

BIG = 1_000_000_000
_KEYS = limiter_keys("stack-floor")
_state: dict = {}


@asynccontextmanager
async def _lifespan(app):
    _state["upstream"] = os.environ["FLOOR_UPSTREAM"].rstrip("/") + "/v1/chat/completions"
    _state["with_redis"] = os.environ.get("FLOOR_REDIS", "1") == "1"
    _state["http"] = aiohttp.ClientSession(auto_decompress=False)
    redis = aioredis.Redis.from_url(os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/0"))
    _state["reserve"] = redis.register_script(load_script("limiter_v1.lua"))
    _state["settle"] = redis.register_script(load_script("limiter_v1_settle.lua"))
    _state["leases"] = 0
    try:
        yield
    finally:
        await _state["http"].close()
        await redis.aclose()


async def _settle(lease: str) -> None:
    await _state["settle"](keys=_KEYS, args=(BIG, 0, lease))


async def chat(request: Request) -> Response:
    body = await request.body()
    settle = None
    if _state["with_redis"]:
        _state["leases"] += 1
        lease = f"{os.getpid()}:{_state['leases']}"
        await _state["reserve"](keys=_KEYS, args=(BIG, BIG, BIG, 30, lease, 60_000))
        settle = BackgroundTask(_settle, lease)
    async with _state["http"].post(_state["upstream"], data=body,
                                   headers={"Content-Type": "application/json"}) as upstream:
        payload = await upstream.read()
    return Response(payload, upstream.status, media_type="application/json", background=settle)


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=_lifespan)


class StackFloor:
    """Runs the floor app under uvicorn (the gateway's settings) on a free port."""

    def __init__(self, upstream_url: str, log_dir: Path, *, workers: int = 2, with_redis: bool = True,
                 redis_url: str = "redis://127.0.0.1:6379/0"):
        from scripts.devnode.processes import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {"FLOOR_UPSTREAM": upstream_url, "FLOOR_REDIS_URL": redis_url,
                     "FLOOR_REDIS": "1" if with_redis else "0"}
        self.name = "stack-floor" if with_redis else "stack-floor-no-redis"
        self._argv = [sys.executable, "-m", "uvicorn", "scripts.bench.stack_floor:app", "--host", "127.0.0.1",
                      "--port", str(self.port), "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
                      "--no-access-log", "--log-level", "warning"]
        self._log_dir = log_dir
        self._proc = None

    def start(self) -> StackFloor:
        from scripts.devnode.processes import ManagedProcess, port_open

        root = Path(__file__).resolve().parents[2]
        self._proc = ManagedProcess(self.name, self._argv, self._log_dir, env=self._env, cwd=root)
        self._proc.wait_until(lambda: port_open("127.0.0.1", self.port), 30, "listening")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def __enter__(self) -> StackFloor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
