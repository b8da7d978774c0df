"""Limiter accuracy: with 150 concurrent clients on one key, how many requests get in.

Requests per minute: 150 clients each fire ``--per-client`` requests at once at a key whose
limit is well below the total; admitted / limit should be exactly 1.00 (no overshoot from
races between gateway workers, no undershoot). Concurrency: 150 clients open long streams
at once on a key with ``max_concurrent`` = C; admitted streams / C should be 1.00.

    .venv/bin/python -m scripts.bench.limiter_accuracy [--clients 150]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import Counter

import aiohttp

from .client import auth, chat_body
from .localnode import LocalNode, wait_engine_idle
from .report import print_table

OTHER_ANSWERS: dict[int, str] = {}  # first body of each status that is neither 200 nor 429


async def burst(base_url: str, key: str, model: str, clients: int, per_client: int) -> tuple[Counter, float]:
    """Every client sends its requests back to back, all clients at the same moment.
    Returns the answers by status and the seconds from the start to the last answer."""
    statuses: Counter = Counter()
    start = asyncio.Event()
    body = chat_body(model, max_tokens=1, stream=False, text="hi")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def client() -> None:
            await start.wait()
            for _ in range(per_client):
                async with session.post(base_url + "/v1/chat/completions", json=body, headers=auth(key)) as r:
                    text = await r.text()
                    statuses[r.status] += 1
                    if r.status not in (200, 429):
                        OTHER_ANSWERS.setdefault(r.status, text[:160])

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
    return statuses, time.perf_counter() - began


async def concurrent_streams(base_url: str, key: str, model: str, clients: int) -> Counter:
    """All clients open a long stream at once and hold it until every answer is known."""
    statuses: Counter = Counter()
    body = chat_body(model, max_tokens=400, stream=True, ignore_eos=True)
    all_answered = asyncio.Event()
    answered = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def client() -> None:
            nonlocal answered
            async with session.post(base_url + "/v1/chat/completions", json=body, headers=auth(key)) as r:
                statuses[r.status] += 1
                answered += 1
                if answered == clients:
                    all_answered.set()
                if r.status == 200:
                    await all_answered.wait()  # hold the slot until everyone has an answer
                else:
                    text = await r.text()
                    if r.status != 429:
                        OTHER_ANSWERS.setdefault(r.status, text[:160])
            # leaving the block closes the stream: the gateway aborts it upstream

        await asyncio.gather(*(client() for _ in range(clients)))
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=150)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--rpm-limits", default="10,60,120")
    parser.add_argument("--concurrency-limits", default="4,16")
    parser.add_argument("--engine-url",
                        help="an engine already running (default: LLM_NODE_BENCH_ENGINE_URL or start one)")
    args = parser.parse_args(argv)
    rows = []
    with LocalNode.start(args.engine_url) as node:
        gateway = node.start_gateway()
        model = node.engine.model
        for limit in (int(x) for x in args.rpm_limits.split(",")):
            key = node.create_key(tier="standard", rpm=limit, tpm=1_000_000_000, max_concurrent=1000)
            got, seconds = asyncio.run(burst(gateway.url, key, model, args.clients, args.per_client))
            sent = sum(got.values())
            # The bucket refills continuously (limit/60 per second), so a burst that lasts s
            # seconds may admit up to limit + floor(limit * s / 60): that is the exact bound.
            bound = limit + math.floor(limit * seconds / 60)
            rows.append(["requests/minute", limit, sent, got[200], got[429], sent - got[200] - got[429],
                         f"{got[200] / limit:.2f}", f"{seconds:.1f} s -> {limit}..{bound}",
                         "yes" if limit <= got[200] <= bound else "NO"])
        wait_engine_idle(node.engine)
        for limit in (int(x) for x in args.concurrency_limits.split(",")):
            key = node.create_key(tier="standard", rpm=1_000_000, tpm=1_000_000_000, max_concurrent=limit)
            got = asyncio.run(concurrent_streams(gateway.url, key, model, args.clients))
            sent = sum(got.values())
            rows.append(["concurrent requests", limit, sent, got[200], got[429], sent - got[200] - got[429],
                         f"{got[200] / limit:.2f}", f"{limit}", "yes" if got[200] == limit else "NO"])
            wait_engine_idle(node.engine)
        print_table(f"Limiter accuracy with {args.clients} concurrent clients on one key",
                    ["limit", "value", "sent", "admitted (200)", "429", "other", "admitted / limit",
                     "allowed (burst time -> range)", "exact"], rows,
                    [f"requests/minute: each client sends {args.per_client} at once (max_tokens=1); "
                     "concurrency: each client holds one stream",
                     "requests/minute is a continuously refilled bucket (limit/60 per s, as OpenAI's): a burst lasting "
                     "s seconds may admit limit + floor(limit*s/60)",
                     f"gateway: {gateway.spec.workers} worker processes sharing the Redis limiter at {node.redis_url}",
                     *(f"other answers, first {status}: {text}" for status, text in sorted(OTHER_ANSWERS.items()))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
