"""Liveness under load, readiness, graceful shutdown and usage accounting."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
import requests

from tests.gateway.api_helpers import CHAT, auth, chat_body, post, sse_data
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.gateway_fixtures import key_id_of
from tests.support.services import ThrowawayRedis

pytestmark = pytest.mark.engine


async def _usage_rows(dsn: str, key_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT request_id, model, tier, prompt_tokens, completion_tokens, status"
                                " FROM usage_records WHERE key_id = $1 ORDER BY id", key_id)
    finally:
        await conn.close()


async def test_healthz_answers_quickly_while_200_streams_are_open(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        upstream.mode, upstream.events, upstream.event_interval = "slow", 40, 0.25   # ~10 s streams
        gw = gateway_factory(engines=[upstream.url])
        key = make_key()
        body = {"model": upstream.model, "messages": [{"role": "user", "content": "x"}], "stream": True}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            opened = asyncio.Event()
            open_count = 0

            async def stream():
                nonlocal open_count
                async with session.post(gw.url + CHAT, json=body, headers=auth(key)) as response:
                    assert response.status == 200
                    await response.content.readuntil(b"\n\n")
                    open_count += 1
                    if open_count == 200:
                        opened.set()
                    return await response.read()

            streams = [asyncio.create_task(stream()) for _ in range(200)]
            await asyncio.wait_for(opened.wait(), 30)
            assert gw.metric("gateway_in_flight_requests") == 200
            for _ in range(5):
                started = time.monotonic()
                async with session.get(gw.url + "/healthz") as health:
                    assert health.status == 200
                assert time.monotonic() - started < 1.0
            bodies = await asyncio.gather(*streams)
        assert all(sse_data(b.decode())[-1] == "[DONE]" for b in bodies)


def test_readyz_says_ready_and_keeps_the_details_on_the_metrics_port(gateway, engine):
    response = requests.get(gateway.url + "/readyz", timeout=10)
    assert response.status_code == 200
    # /readyz is reachable through the edge: status only, no dependency and no internal URL.
    assert response.json() == {"status": "ready"}
    assert engine.url not in response.text and "127.0.0.1" not in response.text
    assert gateway.metric("gateway_dependency_up", dependency="postgres") == 1
    assert gateway.metric("gateway_dependency_up", dependency="redis") == 1
    assert gateway.metric("gateway_engine_healthy", upstream=engine.url) == 1


async def test_a_burst_of_readyz_neither_fails_nor_loads_redis(gateway_factory, log_dir):
    """More concurrent /readyz than the limiter leaves free in its Redis pool: every one is
    answered 'ready', and Redis sees about one PING a second, not one per call."""
    redis = ThrowawayRedis(log_dir).start()
    try:
        gw = gateway_factory(redis_url=redis.url)
        admin = aioredis.Redis.from_url(redis.url)

        async def pings() -> int:
            return (await admin.info("commandstats")).get("cmdstat_ping", {}).get("calls", 0)

        before = await pings()
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            async def readyz() -> int:
                async with session.get(gw.url + "/readyz") as response:
                    await response.read()
                    return response.status
            statuses = []
            for _ in range(3):
                statuses += await asyncio.gather(*(readyz() for _ in range(100)))
        elapsed = time.monotonic() - started
        sent = await pings() - before
        await admin.aclose()
        assert statuses == [200] * 300
        # One check a second at most, plus the background watcher's (every 2 s): a handful for the
        # whole burst, however slow the machine, nowhere near one per probe.
        assert sent <= 1.5 * elapsed + 4 and sent < 100, f"{sent} PINGs for 300 /readyz in {elapsed:.1f} s"
    finally:
        redis.stop()


async def test_usage_of_every_request_is_recorded_from_the_engines_usage(gateway, make_key, engine,
                                                                         migrated_database_url):
    key = make_key(tier="premium")
    plain = post(gateway, CHAT, key, chat_body(engine.model, max_tokens=3, ignore_eos=True))
    streamed = post(gateway, CHAT, key, chat_body(engine.model, max_tokens=4, stream=True, ignore_eos=True))
    expected = {plain.headers["x-request-id"]: (plain.json()["usage"]["prompt_tokens"], 3),
                streamed.headers["x-request-id"]: (plain.json()["usage"]["prompt_tokens"], 4)}
    deadline = time.monotonic() + 10
    while len(rows := await _usage_rows(migrated_database_url, key_id_of(key))) < 2:
        assert time.monotonic() < deadline, "usage was not written"
        await asyncio.sleep(0.3)
    assert {r["request_id"]: (r["prompt_tokens"], r["completion_tokens"]) for r in rows} == expected
    assert {(r["model"], r["tier"], r["status"]) for r in rows} == {(engine.model, "premium", 200)}


async def test_a_constant_client_request_id_does_not_collapse_usage(gateway, make_key, engine,
                                                                      migrated_database_url):
    """Three requests sent with one X-Request-ID are three usage records, each
    under its own gateway-generated id, with the client's id beside it; the client still gets its
    own id back."""
    key = make_key()
    for _ in range(3):
        response = post(gateway, CHAT, key, chat_body(engine.model, max_tokens=1), headers={"X-Request-ID": "same"})
        assert response.status_code == 200 and response.headers["x-request-id"] == "same"
    deadline = time.monotonic() + 10
    while True:
        conn = await asyncpg.connect(migrated_database_url)
        try:
            rows = await conn.fetch("SELECT request_id, client_request_id FROM usage_records WHERE key_id = $1",
                                    key_id_of(key))
        finally:
            await conn.close()
        if len(rows) >= 3 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert len(rows) == 3
    assert len({r["request_id"] for r in rows}) == 3 and "same" not in {r["request_id"] for r in rows}
    assert {r["client_request_id"] for r in rows} == {"same"}


async def test_graceful_shutdown_drains_in_flight_streams_and_flushes_usage(gateway_factory, make_key,
                                                                            migrated_database_url):
    with FlakyUpstream() as upstream:
        upstream.mode, upstream.events, upstream.event_interval = "slow", 10, 0.2   # ~2 s streams
        gw = gateway_factory(engines=[upstream.url], shutdown_grace_seconds=15)
        key = make_key()
        body = {"model": upstream.model, "messages": [{"role": "user", "content": "x"}], "stream": True}
        async with aiohttp.ClientSession() as session:
            started = asyncio.Event()
            count = 0

            async def stream():
                nonlocal count
                async with session.post(gw.url + CHAT, json=body, headers=auth(key)) as response:
                    await response.content.readuntil(b"\n\n")
                    count += 1
                    if count == 5:
                        started.set()
                    return response.headers["x-request-id"], (await response.read()).decode()

            streams = [asyncio.create_task(stream()) for _ in range(5)]
            await asyncio.wait_for(started.wait(), 15)
            gw.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            # No longer accepting: a new connection is refused.
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(gw.url + "/healthz") as _:
                    pass
            results = await asyncio.gather(*streams)
        # Every in-flight stream ran to its end.
        assert all(sse_data(text)[-1] == "[DONE]" for _, text in results)
        exit_code = await asyncio.to_thread(gw.proc.proc.wait, 30)
        assert exit_code == 0, gw.log_tail()
    # ...and its usage reached PostgreSQL before the process exited.
    rows = await _usage_rows(migrated_database_url, key_id_of(key))
    assert {r["request_id"] for r in rows} == {request_id for request_id, _ in results}
    assert all(r["completion_tokens"] == 10 and r["status"] == 200 for r in rows)
