"""Limits are global across gateway replicas: three real gateway processes, one Redis, one PostgreSQL.

What the kubernetes target's gateway Deployment (2..N replicas behind one Service) relies on:
the replicas share nothing but PostgreSQL (keys, usage) and Redis (the limiter's atomic Lua
scripts), so a key's RPM, its TPM, its concurrency cap and its usage are the same whichever
replica each request lands on (the opposite of per-replica limits that multiply with the
replica count). The engine is the fake upstream (tests/support/flaky_upstream.py), counting
requests in flight and, for the TPM test, reporting as usage exactly the tokens each request
reserved (so the bucket is never refilled by reconciliation, only by time).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import asyncpg
import orjson
import pytest

from llm_gateway.tokens import estimate
from tests.gateway.api_helpers import CHAT, auth
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.gateway_fixtures import key_id_of, start_gateway

REPLICAS = 3


class CountingUpstream(FlakyUpstream):
    """The fake engine, also counting completions in flight (the most ever at once). With
    `usage` = (prompt, completion) set, its answers report that usage instead of (3, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.max_in_flight = 0
        self.usage: tuple[int, int] | None = None

    def _completion(self, chat: bool) -> dict:
        answer = super()._completion(chat)
        if self.usage is not None:
            prompt, completion = self.usage
            answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion}
        return answer

    async def _complete(self, request):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super()._complete(request)
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
def upstream():
    with CountingUpstream() as started:
        yield started


@pytest.fixture(scope="module")
def replicas(log_dir, migrated_database_url, redis_url, upstream):
    started = []
    try:
        for i in range(REPLICAS):
            started.append(start_gateway(log_dir, name=f"gateway-replica-{i}", engines=[upstream.url], workers=1,
                                         limiter_failure_mode="closed", key_cache_ttl_seconds=1.0,
                                         shutdown_grace_seconds=5.0, database_url=migrated_database_url,
                                         redis_url=redis_url))
        yield started
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture(scope="module")
def unshared_replicas(log_dir, migrated_database_url, redis_url, upstream):
    """Three gateways that do NOT share Redis (one database each, as per-replica limiter state
    would be): the measurements below must tell them from the shared ones."""
    base = redis_url.rsplit("/", 1)[0]
    started = []
    try:
        for i in range(REPLICAS):
            started.append(start_gateway(log_dir, name=f"gateway-unshared-{i}", engines=[upstream.url], workers=1,
                                         limiter_failure_mode="closed", shutdown_grace_seconds=5.0,
                                         database_url=migrated_database_url, redis_url=f"{base}/{13 + i}"))
        yield started
    finally:
        for gateway in started:
            gateway.stop()


async def _usage_rows(database_url: str, key: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT count(*) FROM usage_records WHERE key_id = $1", key_id_of(key))
    finally:
        await connection.close()


async def _usage_tokens(database_url: str, key: str) -> int:
    """prompt + completion tokens of the key's usage records."""
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) "
                                         "FROM usage_records WHERE key_id = $1", key_id_of(key))
    finally:
        await connection.close()


async def _wait_for_usage_rows(database_url: str, key: str, expected: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while await _usage_rows(database_url, key) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # and no more arrive (a double count would show now)
    return await _usage_rows(database_url, key)


async def test_rpm_is_global_across_replicas(replicas, upstream, make_key, migrated_database_url):
    limit, clients = 7, 60
    key = make_key(rpm=limit)
    upstream.mode = "ok"
    results, elapsed = await _burst(replicas, key, _rpm_request(upstream.model), clients)
    assert elapsed < 30  # well inside the minute's window
    statuses = [status for _, status, _, _ in results]
    assert statuses.count(200) == limit, statuses
    assert statuses.count(429) == clients - limit
    # Every replica answered some of them: the limit held across processes, not inside one.
    assert {url for url, *_ in results} == {g.url for g in replicas}
    assert await _wait_for_usage_rows(migrated_database_url, key, limit) == limit


async def test_concurrency_cap_is_global_across_replicas(replicas, upstream, make_key, migrated_database_url):
    cap, requests_ = 2, 9
    key = make_key(max_concurrent=cap)
    upstream.mode, upstream.events, upstream.event_interval = "slow", 5, 0.1
    upstream.max_in_flight = 0
    body = {"model": upstream.model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
            "stream": True}
    rejected = 0
    async with aiohttp.ClientSession() as session:
        async def until_served(gateway):
            nonlocal rejected
            deadline = time.monotonic() + 60
            while True:
                async with session.post(gateway.url + CHAT, json=body, headers=auth(key)) as response:
                    text = await response.text()
                    if response.status == 200:
                        assert text.rstrip().endswith("data: [DONE]")
                        return
                    assert response.status == 429, text
                    rejected += 1
                assert time.monotonic() < deadline, "never admitted"
                await asyncio.sleep(0.05)
        await asyncio.gather(*(until_served(replicas[i % REPLICAS]) for i in range(requests_)))
    try:
        assert upstream.max_in_flight == cap  # reached, never exceeded, across the three processes
        assert rejected > 0
        assert await _wait_for_usage_rows(migrated_database_url, key, requests_) == requests_
    finally:
        upstream.mode = "ok"


# -- tokens per minute ------------------------------------------------------------------------------------

TPM_FULL_REQUESTS = 4      # requests a full bucket holds
TPM_CLIENTS = 60


def _rpm_request(model: str) -> bytes:
    """The smallest chat request: the RPM tests count requests, not tokens."""
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})


def _tpm_request(model: str) -> tuple[bytes, tuple[int, int]]:
    """A chat body (exact bytes) and the tokens the gateway reserves for it, (prompt, completion):
    the prompt's estimate from the body's size (llm_gateway/tokens.py) and max_tokens
    (llm_gateway/validation.py: reserved = prompt estimate + max_tokens)."""
    max_tokens = 100
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "count my tokens"}],
                         "max_tokens": max_tokens})
    return body, (estimate(len(body)), max_tokens)


async def _burst(gateways, key: str, body: bytes, clients: int) -> tuple[list[tuple[str, int, str, dict]], float]:
    """``clients`` concurrent requests spread over ``gateways`` in turn: (url, status, text,
    headers) each, and the seconds the burst took."""
    headers = {**auth(key), "content-type": "application/json"}
    targets = itertools.cycle(gateways)
    async with aiohttp.ClientSession() as session:
        async def one(gateway):
            async with session.post(gateway.url + CHAT, data=body, headers=headers) as response:
                return (gateway.url, response.status, await response.text(),
                        {name.lower(): value for name, value in response.headers.items()})
        started = time.monotonic()
        results = await asyncio.gather(*(one(next(targets)) for _ in range(clients)))
        return results, time.monotonic() - started


async def test_tpm_is_global_across_replicas(replicas, upstream, make_key, migrated_database_url):
    """A key whose bucket holds 4.5 requests' tokens, 60 concurrent clients over the three
    gateways. The engine reports as usage exactly what each request reserved, so nothing flows
    back into the bucket: the tokens admitted never exceed the limit plus what time refilled
    during the burst (less than one request's worth in any run under ~6 s: exactly 4 admitted)."""
    body, usage = _tpm_request(upstream.model)
    reserved = sum(usage)
    tpm = TPM_FULL_REQUESTS * reserved + reserved // 2
    key = make_key(tpm=tpm)
    upstream.mode = "ok"
    upstream.usage = usage   # the prompt as estimated, and every max_tokens token: nothing given back
    refused_before = sum(g.metric("gateway_limiter_decisions_total", decision="rejected", reason="tpm")
                         for g in replicas)
    try:
        results, elapsed = await _burst(replicas, key, body, TPM_CLIENTS)
    finally:
        upstream.usage = None
    assert elapsed < 30  # well inside the minute's window
    refilled = tpm * elapsed / 60
    statuses = [status for _, status, _, _ in results]
    admitted = statuses.count(200)
    # A full bucket admits at least TPM_FULL_REQUESTS (each refusal means less than one request
    # left); the bucket admits no more than it holds plus what refilled meanwhile.
    assert TPM_FULL_REQUESTS <= admitted <= (tpm + refilled) // reserved, (statuses, elapsed)
    assert admitted * reserved <= tpm + refilled
    # Every refusal is the tokens limit's 429, whichever replica gave it.
    for _url, status, text, headers in results:
        if status != 200:
            assert status == 429, text
            assert orjson.loads(text)["error"]["message"].startswith("Rate limit reached for tokens"), text
            assert headers["x-ratelimit-limit-tokens"] == str(tpm)
            assert int(headers["x-ratelimit-remaining-tokens"]) < reserved
    refused = sum(g.metric("gateway_limiter_decisions_total", decision="rejected", reason="tpm")
                  for g in replicas) - refused_before
    assert refused == TPM_CLIENTS - admitted
    assert {url for url, *_ in results} == {g.url for g in replicas}
    # Usage: one row per completed request, carrying the tokens the limiter admitted.
    assert await _wait_for_usage_rows(migrated_database_url, key, admitted) == admitted
    assert await _usage_tokens(migrated_database_url, key) == admitted * reserved


# -- the measurements discriminate -------------------------------------------------------------------------


async def test_the_rpm_check_would_see_per_replica_limits(unshared_replicas, upstream, make_key):
    """Replicas that do NOT share Redis admit the limit once per replica, and the RPM test's
    `== limit` would fail."""
    limit = 4
    key = make_key(rpm=limit)
    upstream.mode = "ok"
    results, _ = await _burst(unshared_replicas, key, _rpm_request(upstream.model), 30)
    assert [status for _, status, _, _ in results].count(200) == REPLICAS * limit


async def test_the_tpm_check_would_see_per_replica_limits(unshared_replicas, upstream, make_key):
    """The same burst as the TPM test on replicas that do NOT share Redis: each replica's own
    bucket admits its TPM_FULL_REQUESTS, three times the limit in all, which the TPM test's
    upper bound refuses."""
    body, usage = _tpm_request(upstream.model)
    reserved = sum(usage)
    tpm = TPM_FULL_REQUESTS * reserved + reserved // 2
    key = make_key(tpm=tpm)
    upstream.mode = "ok"
    upstream.usage = usage
    try:
        results, elapsed = await _burst(unshared_replicas, key, body, TPM_CLIENTS)
    finally:
        upstream.usage = None
    admitted = [status for _, status, _, _ in results].count(200)
    assert admitted >= REPLICAS * TPM_FULL_REQUESTS, results
    assert admitted > (tpm + tpm * elapsed / 60) // reserved  # the shared test's bound fails here


def test_engine_names_that_do_not_resolve_yet_are_skipped(log_dir, upstream, make_key, migrated_database_url,
                                                          redis_url):
    """The kubernetes target gives the gateway one per-pod name per possible engine replica; the
    replicas KEDA has not started have no DNS record yet. The gateway marks them down (a failed
    lookup is a refused connection) and serves from the engines that exist."""
    missing = "http://engine-7.engine.llm-node-test.invalid:8000"
    gateway = start_gateway(log_dir, name="gateway-dns", engines=[missing, upstream.url], workers=1,
                            engine_dns_ttl_seconds=10, shutdown_grace_seconds=5.0,
                            database_url=migrated_database_url, redis_url=redis_url)
    try:
        upstream.mode = "ok"
        key = make_key()
        import requests

        body = {"model": upstream.model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        statuses = [requests.post(gateway.url + CHAT, json=body, headers=auth(key), timeout=10).status_code
                    for _ in range(10)]
        assert statuses == [200] * 10
        assert gateway.metric("gateway_engine_healthy", upstream=missing) == 0
        assert gateway.metric("gateway_engine_healthy", upstream=upstream.url) == 1
    finally:
        gateway.stop()


def test_the_dns_cache_setting_reaches_the_gateway(monkeypatch):
    from llm_gateway.settings import Settings
    from services.launch import GatewaySpec, gateway_env

    spec = GatewaySpec(engines=["http://engine-0.engine:8000"], engine_dns_ttl_seconds=10)
    for name, value in gateway_env(spec).items():
        monkeypatch.setenv(name, value)
    assert Settings().engine_dns_ttl_seconds == 10
    monkeypatch.delenv("GATEWAY_ENGINE_DNS_TTL_SECONDS")
    assert Settings().engine_dns_ttl_seconds == GatewaySpec(engines=["x"]).engine_dns_ttl_seconds == 300
