"""What one call on each of the gateway's hops costs, after an idle pause and back to back.

Not a test: it prints a table. It explains the stack's floor that gateway_overhead.py prints
(why a Python hop costs more at 200 req/s than at 2,000): every call is timed alone, either
after a pause of --pause-ms (what each request meets at a low rate: the process has been
idle) or straight after the previous call (a busy process). Each call is made four ways:
  - raw TCP round trip to the nginx fake engine (an asyncio Protocol writing a pre-built
    request): what the machine charges for the hop itself, with no client library;
  - aiohttp POST with the gateway's session settings (the gateway's upstream call);
  - raw Redis EVALSHA of limiter_v1.lua (an asyncio Protocol, pre-built command);
  - the same EVALSHA through the gateway's limiter (ScriptRunner over redis-py).
The library's share is its time minus the raw round trip of the same exchange.

    .venv/bin/python -m scripts.bench.hop_costs [--calls 600] [--pause-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from llm_gateway.limiter_scripts import limiter_keys, load_script
from llm_gateway.redis_client import ScriptRunner, create_redis
from scripts.bench.gateway_overhead import body_for
from scripts.bench.nginx_upstream import NginxUpstream
from scripts.bench.report import ms, percentile, print_table
from scripts.devnode.local_services import ensure_redis

BIG = 1_000_000_000
KEYS = limiter_keys("hop-costs")
ARGS = (BIG, BIG, 0, 30, "", 60_000)   # limits that never bite, no tokens, no concurrency lease


class _OneReply(asyncio.Protocol):
    """Writes a pre-built request and resolves a future on the first bytes back (both answers
    used here arrive in one segment)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(data)

    async def call(self, request: bytes) -> bytes:
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.reply


async def _timed(call: Callable[[], Awaitable], calls: int, pause: float) -> float:
    for _ in range(20):          # warm-up: connections open, code imported
        await call()
    latencies = []
    for _ in range(calls):
        if pause:
            await asyncio.sleep(pause)
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    return percentile(latencies, 50)


async def measure(upstream_url: str, upstream_port: int, redis_url: str, calls: int, pause: float) -> list[list]:
    loop = asyncio.get_running_loop()
    body = body_for("bench-model")
    http_request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    _, raw_http = await loop.create_connection(_OneReply, "127.0.0.1", upstream_port)

    session = aiohttp.ClientSession(auto_decompress=False)
    timeout = aiohttp.ClientTimeout(total=600, sock_connect=5)     # as runtime.py sets it
    headers = {"content-type": "application/json"}

    async def aiohttp_post() -> None:
        async with session.post(upstream_url + "/v1/chat/completions", data=body, headers=headers,
                                timeout=timeout) as response:
            await response.read()

    redis = create_redis(redis_url)
    reserve = redis.register_script(load_script("limiter_v1.lua"))
    runner = ScriptRunner(redis)
    await runner.run(reserve, KEYS, ARGS)       # loads the script (EVAL on NOSCRIPT)
    host, port = redis.connection_pool.connection_kwargs["host"], redis.connection_pool.connection_kwargs["port"]
    _, raw_redis = await loop.create_connection(_OneReply, host, port)
    # The command's bytes as redis-py encodes them (its packer; no connection is opened).
    evalsha = b"".join(redis.connection_pool.make_connection().pack_command(
        "EVALSHA", reserve.sha, len(KEYS), *KEYS, *ARGS))

    pairs = [("engine call (HTTP POST to nginx)", lambda: raw_http.call(http_request), aiohttp_post, "aiohttp"),
             ("limiter call (EVALSHA limiter_v1.lua)", lambda: raw_redis.call(evalsha),
              lambda: runner.run(reserve, KEYS, ARGS), "redis-py (limiter's runner)")]
    rows = []
    try:
        for hop, raw_call, library_call, library in pairs:
            raw_idle = await _timed(raw_call, calls, pause)
            lib_idle = await _timed(library_call, calls, pause)
            raw_busy = await _timed(raw_call, calls, 0)
            lib_busy = await _timed(library_call, calls, 0)
            rows.append([hop, library, ms(raw_idle), ms(lib_idle), ms(lib_idle - raw_idle),
                         ms(raw_busy), ms(lib_busy), ms(lib_busy - raw_busy)])
    finally:
        await session.close()
        await redis.aclose()
        raw_http.transport.close()
        raw_redis.transport.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600, help="timed calls per cell")
    parser.add_argument("--pause-ms", type=float, default=5.0, help="idle pause before each call (5 ms = 200 req/s)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    ensure_redis()
    upstream = NginxUpstream(Path(tempfile.mkdtemp(prefix="hop-costs-"))).start()
    try:
        rows = uvloop.run(measure(upstream.url, upstream.port, args.redis_url, args.calls, args.pause_ms / 1000))
    finally:
        upstream.stop()
    print_table("one call on each hop of the gateway, p50 (uvloop, one call at a time)",
                ["hop", "library", f"raw, after {args.pause_ms:g} ms idle", "library, after idle", "library share",
                 "raw, back to back", "library, back to back", "library share"], rows,
                notes=[f"{args.calls} calls per cell; raw = an asyncio Protocol writing pre-built bytes",
                       "library share = library minus raw for the same exchange: the Python work of the call",
                       "at 200 req/s each gateway worker is idle ~5-10 ms between requests: the 'after idle' columns"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
