"""Gateway memory after 100k requests: a leak check.

Sends ``--requests`` (default 100 000) through one gateway, mixed like real traffic: plain
and streaming chat completions, text completions, /v1/models, a key over its rate limit
(429) and unknown keys (401). The upstream is ``fast_upstream`` so the run measures the
gateway (auth cache, limiter, proxy, usage batching), not the CPU engine. RSS of the
gateway's processes (supervisor + workers) is sampled after a warm-up and at checkpoints.

    .venv/bin/python -m scripts.bench.memory_soak [--requests 100000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

import aiohttp

from scripts.devnode.processes import ManagedProcess, free_port, http_ok

from .client import auth, chat_body
from .localnode import ROOT, LocalNode
from .report import print_table

WARMUP = 5_000
MB = 1024 * 1024


def request_for(i: int, keys: dict[str, str], model: str) -> tuple[str, str, dict | None, str | None]:
    """(method, path, body, key) for request number i: a fixed, repeating mix."""
    slot = i % 20
    if slot < 11:
        return "POST", "/v1/chat/completions", chat_body(model, 8, stream=False), keys["main"]
    if slot < 15:
        return "POST", "/v1/chat/completions", chat_body(model, 8, stream=True), keys["main"]
    if slot < 17:
        return "POST", "/v1/completions", {"model": model, "prompt": "Once upon", "max_tokens": 8}, keys["main"]
    if slot == 17:
        return "GET", "/v1/models", None, keys["main"]
    if slot == 18:
        return "POST", "/v1/chat/completions", chat_body(model, 8, stream=False), keys["limited"]
    return "POST", "/v1/chat/completions", chat_body(model, 8, stream=False), f"sk-unknown{i}-notasecret"


async def soak(gateway, keys: dict[str, str], model: str, total: int, concurrency: int,
               checkpoints: list[int]) -> tuple[list[tuple[int, float, int, float]], Counter]:
    samples: list[tuple[int, float, int, float]] = []  # (requests done, rss MB, processes, elapsed s)
    statuses: Counter = Counter()
    done = 0
    next_index = 0
    start = time.perf_counter()
    pending = sorted(checkpoints)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker() -> None:
            nonlocal done, next_index
            while next_index < total:
                i = next_index
                next_index += 1
                method, path, body, key = request_for(i, keys, model)
                async with session.request(method, gateway.url + path, json=body, headers=auth(key)) as response:
                    await response.read()
                    statuses[response.status] += 1
                done += 1
                while pending and done >= pending[0]:
                    pending.pop(0)
                    samples.append((done, gateway.rss_bytes() / MB, len(gateway.processes()),
                                    time.perf_counter() - start))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    total = args.requests
    checkpoints = sorted({min(WARMUP, total // 10)} | {total * k // 10 for k in range(1, 11)})

    # The node's engine is not needed: the gateway talks to the fast upstream only.
    with LocalNode.start(engine_url="http://127.0.0.1:1") as node:
        port = free_port()
        upstream = ManagedProcess(f"fast-upstream-{port}", [sys.executable, "-m", "scripts.bench.fast_upstream",
                                                            "--port", str(port)], node.log_dir, cwd=ROOT)
        node._cleanup.callback(upstream.stop)
        upstream.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 30, "ready")
        gateway = node.start_gateway(engines=[f"http://127.0.0.1:{port}"])
        keys = {"main": node.create_key(tier="standard", rpm=10_000_000, tpm=2_000_000_000, max_concurrent=10_000),
                "limited": node.create_key(tier="batch", rpm=5, tpm=1_000_000, max_concurrent=10)}
        before = gateway.rss_bytes() / MB
        samples, statuses = asyncio.run(soak(gateway, keys, "tiny-llama", total, args.concurrency, checkpoints))
        time.sleep(2)  # let usage batches flush
        after_idle = gateway.rss_bytes() / MB

    warm = samples[0]
    rows = [[f"{n:,}", f"{rss:.1f}", f"{rss - warm[1]:+.1f}", procs, f"{n / elapsed:.0f}"]
            for n, rss, procs, elapsed in samples]
    second_half = [s for s in samples if s[0] >= total // 2]
    growth = (second_half[-1][1] - second_half[0][1]) if len(second_half) > 1 else float("nan")
    per_10k = growth / ((second_half[-1][0] - second_half[0][0]) / 10_000) if len(second_half) > 1 else float("nan")
    print_table(f"Gateway memory over {total:,} requests (RSS of supervisor + workers)",
                ["requests", "RSS MB", "vs warm-up", "processes", "req/s so far"], rows,
                [f"at start: {before:.1f} MB; 2 s after the last request: {after_idle:.1f} MB",
                 f"second half growth: {growth:+.1f} MB ({per_10k:+.2f} MB per 10k requests)",
                 f"statuses: {dict(sorted(statuses.items()))}",
                 f"mix per 20 requests: 11 chat, 4 streaming chat, 2 text completions, 1 /v1/models, "
                 f"1 over-limit key (429), 1 unknown key (401); concurrency {args.concurrency}; fast upstream"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
