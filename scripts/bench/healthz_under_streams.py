"""/healthz latency while 256 streams are open through the gateway (event loop never blocked).

Measures /healthz sequentially with the gateway idle, then again while 256 long streaming
completions are in flight through it (most queue in vLLM; the gateway holds all 256).

    .venv/bin/python -m scripts.bench.healthz_under_streams [--streams 256] [--probes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from .client import auth, chat_body, timed_request
from .localnode import LocalNode, wait_engine_idle
from .report import SUMMARY_HEADERS, print_table, summary_ms


async def probe_healthz(session: aiohttp.ClientSession, gateway_url: str, probes: int) -> list[float]:
    latencies = []
    for _ in range(probes):
        status, seconds = await timed_request(session, "GET", gateway_url + "/healthz")
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}")
        latencies.append(seconds)
        await asyncio.sleep(0.01)
    return latencies


async def measure(gateway_url: str, key: str, model: str, streams: int, probes: int) -> dict:
    result: dict = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        await probe_healthz(session, gateway_url, 20)  # warm the connection
        result["idle"] = await probe_healthz(session, gateway_url, probes)

        opened = 0
        first_byte = 0
        statuses: dict[int, int] = {}
        refusals: dict[int, str] = {}
        ended_early: list[bytes] = []
        stop = asyncio.Event()
        body = chat_body(model, max_tokens=1800, stream=True, ignore_eos=True)

        async def stream(delay: float) -> None:
            nonlocal opened, first_byte
            await asyncio.sleep(delay)  # a ramp, not a thundering herd: the figure is about open streams
            for _ in range(10):
                async with session.post(gateway_url + "/v1/chat/completions", json=body, headers=auth(key)) as r:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    if r.status == 503:  # momentary refusal (admission, limiter timeout): try again
                        refusals.setdefault(r.status, (await r.text())[:160])
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status != 200:
                        refusals.setdefault(r.status, (await r.text())[:160])
                        return
                    opened += 1
                    got_byte = False
                    last = b""
                    while not stop.is_set():
                        try:
                            chunk = await asyncio.wait_for(r.content.readany(), 0.5)
                        except TimeoutError:
                            continue
                        if not chunk:
                            ended_early.append(last[-160:])  # the server ended it before we did
                            return
                        last = chunk
                        if not got_byte:
                            got_byte, first_byte = True, first_byte + 1
                    return

        tasks = [asyncio.create_task(stream(i * 0.01)) for i in range(streams)]
        deadline = time.monotonic() + 60
        while opened < streams and time.monotonic() < deadline and not all(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        result["open"] = opened
        result["streaming"] = first_byte
        result["under_load"] = await probe_healthz(session, gateway_url, probes)
        result["open_after"] = sum(not t.done() for t in tasks)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        result["statuses"] = statuses
        result["refusals"] = refusals
        result["ended_early"] = ended_early
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--engine-url",
                        help="an engine already running (default: LLM_NODE_BENCH_ENGINE_URL or start one)")
    args = parser.parse_args(argv)
    with LocalNode.start(args.engine_url) as node:
        gateway = node.start_gateway()
        key = node.create_key(tier="batch", rpm=1_000_000, tpm=1_000_000_000, max_concurrent=args.streams + 50)
        got = asyncio.run(measure(gateway.url, key, node.engine.model, args.streams, args.probes))
        wait_engine_idle(node.engine)
        print_table(f"/healthz latency with {args.streams} streams open through the gateway",
                    ["gateway state", *SUMMARY_HEADERS],
                    [["idle", *summary_ms(got["idle"])],
                     [f"{got['open']} streams open", *summary_ms(got["under_load"])]],
                    [f"streams open: {got['open']} of {args.streams}; already receiving bytes: "
                     f"{got['streaming']}; still open after the probes: {got['open_after']}; answers {got['statuses']} "
                     "(refused streams retried, up to 10 times)",
                     *(f"first {status} answer: {text}" for status, text in got["refusals"].items()),
                     f"streams the server ended before the client: {len(got['ended_early'])}"
                     + (f"; last bytes of one: {got['ended_early'][0]!r}" if got["ended_early"] else ""),
                     "streams: max_tokens=1800, ignore_eos (vLLM runs max_num_seqs of them, queues the rest)",
                     f"probes: sequential GET /healthz, 10 ms apart; gateway workers: {gateway.spec.workers}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
