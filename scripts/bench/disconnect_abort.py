"""Client disconnect -> engine abort: how long vLLM keeps generating for a client that left.

A long streaming generation is started (through the gateway, and straight to vLLM for
reference); after a few chunks the client closes the connection. The time until vLLM's
own ``vllm:num_requests_running`` is back at its level before the request is the figure.
Run it on an engine nobody else is using: other traffic moves that gauge too.

    .venv/bin/python -m scripts.bench.disconnect_abort [--trials 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from .client import auth, chat_body
from .localnode import LocalNode, wait_engine_idle
from .report import SUMMARY_HEADERS, print_table, summary_ms

POLL_SECONDS = 0.01


async def running(session: aiohttp.ClientSession, engine_url: str) -> float:
    async with session.get(engine_url + "/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def one_trial(base_url: str, key: str | None, engine_url: str, model: str, timeout: float) -> float:
    """Seconds from closing the stream until the engine runs one request fewer than just before."""
    # A generation that would run for a long time: it ends only by the abort.
    body = chat_body(model, max_tokens=1500, stream=True, ignore_eos=True)
    async with aiohttp.ClientSession() as probe, aiohttp.ClientSession() as client:
        for attempt in range(5):
            response = await client.post(base_url + "/v1/chat/completions", json=body, headers=auth(key))
            if response.status == 200:
                break
            text = await response.text()
            if response.status != 503 or attempt == 4:  # 503: engine briefly marked unhealthy; retry
                raise RuntimeError(f"stream refused: {response.status} {text[:200]}")
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        chunks = 0
        async for line in response.content:
            if line.startswith(b"data: "):
                chunks += 1
                if chunks >= 3:
                    break
        before = await running(probe, engine_url)
        if before < 1:
            raise RuntimeError("vllm:num_requests_running does not show the stream; wrong engine URL?")
        response.close()  # drop the connection, as a client that goes away does
        closed = time.perf_counter()
        while time.perf_counter() - closed < timeout:
            if await running(probe, engine_url) <= before - 1:
                return time.perf_counter() - closed
            await asyncio.sleep(POLL_SECONDS)
        return float("inf")


async def measure(base_url: str, key: str | None, engine_url: str, model: str, trials: int) -> list[float]:
    results = []
    for _ in range(trials):
        results.append(await one_trial(base_url, key, engine_url, model, timeout=30))
        await asyncio.sleep(0.3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--engine-url",
                        help="an engine already running (default: LLM_NODE_BENCH_ENGINE_URL or start one)")
    args = parser.parse_args(argv)
    with LocalNode.start(args.engine_url) as node:
        gateway = node.start_gateway()
        key = node.create_key(tier="standard", rpm=100_000, tpm=1_000_000_000, max_concurrent=100)
        waited = wait_engine_idle(node.engine)
        direct = asyncio.run(measure(node.engine.url, None, node.engine.url, node.engine.model, args.trials))
        through = asyncio.run(measure(gateway.url, key, node.engine.url, node.engine.model, args.trials))
        print_table("Client disconnect -> vLLM abort (vllm:num_requests_running back to its level)",
                    ["path", *SUMMARY_HEADERS],
                    [["direct to vLLM", *summary_ms(direct)], ["through gateway", *summary_ms(through)]],
                    ["streaming, max_tokens=1500, ignore_eos; closed after 3 chunks; "
                     f"polled every {POLL_SECONDS * 1000:.0f} ms",
                     f"engine {node.engine.url} (idle after {waited:.1f} s wait); the issue's bound is 1 s",
                     f"never aborted within 30 s: {sum(t == float('inf') for t in direct + through)}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
