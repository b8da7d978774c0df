"""Streaming: the time to first token that the gateway adds.

The same streaming chat completion is sent straight to vLLM and through the gateway (auth,
Redis limiter, validation, priority, SSE pass-through all active), alternating, so both
paths see the same engine load. TTFT = send -> first SSE chunk with a choice (vLLM sends
it when the first token is generated).

    .venv/bin/python -m scripts.bench.streaming_ttft [--requests 60] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import aiohttp

from .client import chat_body, timed_stream
from .localnode import LocalNode
from .report import SUMMARY_HEADERS, ms, percentile, print_table, summary_ms


async def measure(engine_url: str, gateway_url: str, key: str, model: str, requests: int, concurrency: int,
                  max_tokens: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"direct": [], "gateway": [], "added": []}
    body = chat_body(model, max_tokens, stream=True)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(3):  # warm both paths (connections, caches, the engine's prefix cache)
            await timed_stream(session, engine_url, None, body)
            await timed_stream(session, gateway_url, key, body)

        async def worker(pairs: int) -> None:
            for i in range(pairs):
                # Alternate which path goes first so neither always sees a warmer engine.
                order = [("direct", engine_url, None), ("gateway", gateway_url, key)]
                if i % 2:
                    order.reverse()
                pair = {}
                for name, url, api_key in order:
                    timing = await timed_stream(session, url, api_key, body)
                    if timing.status != 200 or timing.first_token is None:
                        raise RuntimeError(f"{name}: status {timing.status}, no chunk with a choice")
                    pair[name] = timing.first_token
                    got[name].append(timing.first_token)
                got["added"].append(pair["gateway"] - pair["direct"])

        per_worker = max(1, requests // concurrency)
        await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="request pairs per concurrency level")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--engine-url",
                        help="an engine already running (default: LLM_NODE_BENCH_ENGINE_URL or start one)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    with LocalNode.start(args.engine_url) as node:
        gateway = node.start_gateway()
        key = node.create_key(tier="premium", rpm=1_000_000, tpm=1_000_000_000, max_concurrent=1000)
        rows = []
        own = []
        for level in levels:
            before = (gateway.metric("gateway_added_latency_seconds_sum"),
                      gateway.metric("gateway_added_latency_seconds_count"))
            got = asyncio.run(measure(node.engine.url, gateway.url, key, node.engine.model, args.requests, level,
                                      args.max_tokens))
            rows.append([level, "direct to vLLM", *summary_ms(got["direct"])])
            rows.append([level, "through gateway", *summary_ms(got["gateway"])])
            rows.append([level, "added (paired)", *summary_ms(got["added"])])
            rows.append([level, "added p50 (gw p50 - direct p50)", "", ms(percentile(got["gateway"], 50)
                                                                          - percentile(got["direct"], 50)),
                         "", "", ""])
            spent = gateway.metric("gateway_added_latency_seconds_sum") - before[0]
            count = gateway.metric("gateway_added_latency_seconds_count") - before[1]
            mean = ms(spent / count) if count else "-"
            own.append(f"concurrency {level}: gateway_added_latency_seconds mean {mean} ms "
                       f"over {count:.0f} requests (the gateway's own account of its time)")
        print_table("Streaming time to first token: direct vs through the gateway",
                    ["concurrency", "path", *SUMMARY_HEADERS], rows,
                    [f"chat completion, stream=True, max_tokens={args.max_tokens}, engine {node.engine.url}",
                     "added (paired): per request pair, gateway TTFT minus direct TTFT sent back to back",
                     f"mean added: {ms(statistics.fmean(got['added']))} ms at concurrency {levels[-1]}", *own])
    return 0


if __name__ == "__main__":
    sys.exit(main())
