"""Rate limits, concurrency caps and admission control as clients see them."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
import requests

from tests.gateway.api_helpers import CHAT, COMPLETIONS, assert_openai_error, auth, chat_body, post
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.gateway_fixtures import wait_until_settled

pytestmark = pytest.mark.engine

DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


async def _fire(url: str, key: str, body: dict, count: int) -> list[tuple[int, dict, dict]]:
    async with aiohttp.ClientSession() as session:
        async def one():
            async with session.post(url, json=body, headers=auth(key)) as response:
                return response.status, dict(response.headers), await response.json(content_type=None)
        return await asyncio.gather(*(one() for _ in range(count)))


async def test_small_rpm_limit_admits_exactly_the_limit_under_concurrency(gateway, make_key, engine):
    limit = 5
    key = make_key(rpm=limit)
    results = await _fire(gateway.url + CHAT, key, chat_body(engine.model, max_tokens=1), 40)
    admitted = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 429]
    assert len(admitted) == limit
    assert len(rejected) == 40 - limit
    for _status, headers, body in rejected:
        assert body["error"]["type"] == "rate_limit_exceeded" and body["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["Retry-After"]) >= 1
        assert headers["x-ratelimit-limit-requests"] == str(limit)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert DURATION.match(headers["x-ratelimit-reset-requests"])
    # Admitted answers carry the headers too, counting down.
    remaining = sorted(int(h["x-ratelimit-remaining-requests"]) for _, h, _ in admitted)
    assert remaining == list(range(limit))


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_bucket_is_reconciled_from_the_real_usage(gateway, make_key, engine, stream):
    tpm = 6000
    key = make_key(tpm=tpm, max_concurrent=4)   # the lease shows when the books are closed
    # A generous max_tokens (reserved up front) but stop strings that end the answer within a
    # few tokens: reconciliation must give back what was reserved and not used.
    body = {"model": engine.model, "prompt": "Tell me a story", "max_tokens": 600,
            "stop": [" ", "e", "a", "t"], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    started = time.monotonic()
    first = post(gateway, COMPLETIONS, key, body)
    assert first.status_code == 200, first.text
    if stream:
        usage = [e for e in first.text.split("\n\n") if '"usage":{' in e][-1]
        used = int(re.search(r'"total_tokens":(\d+)', usage).group(1))
    else:
        used = first.json()["usage"]["total_tokens"]
    assert used < 100
    # The first answer's headers show the reservation (600 max_tokens at least)...
    assert int(first.headers["x-ratelimit-remaining-tokens"]) <= tpm - 600
    # A non-streaming answer's books are closed just after it is sent (the client is not kept
    # waiting for Redis), so wait for that: the one settle call that returns the unused tokens
    # also frees the request's concurrency lease.
    wait_until_settled(gateway, key)
    # ...the next request sees the bucket with only the real usage (and its own small
    # reservation) taken out. Unreconciled, it would be 600 lower (refill is 0.1 token/ms).
    second = post(gateway, COMPLETIONS, key, {"model": engine.model, "prompt": "x", "max_tokens": 1})
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    refill = (time.monotonic() - started) * tpm / 60   # tokens the bucket regained meanwhile
    assert refill < 200
    assert tpm - used - 50 <= remaining <= tpm - used + refill
    assert second.headers["x-ratelimit-limit-tokens"] == str(tpm)



def test_a_request_larger_than_the_tokens_limit_is_429(gateway, make_key, engine):
    key = make_key(tpm=100)
    error = assert_openai_error(post(gateway, CHAT, key, chat_body(engine.model, max_tokens=500)), 429)
    assert "tokens per minute" in error["message"]


def test_per_key_concurrency_cap(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        upstream.mode, upstream.events, upstream.event_interval = "slow", 20, 0.1
        gw = gateway_factory(engines=[upstream.url])
        key = make_key(max_concurrent=1)
        body = {"model": upstream.model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                "stream": True}
        with requests.post(gw.url + CHAT, json=body, headers=auth(key), stream=True, timeout=30) as first:
            assert first.status_code == 200
            chunks = first.iter_content(None)   # keep the iterator: dropping it closes the connection
            next(chunks)                        # the stream is open
            second = post(gw, CHAT, key, body)
            error = assert_openai_error(second, 429)
            assert "concurrent" in error["message"]
            assert int(second.headers["Retry-After"]) >= 1
        # Once the first finished (or was dropped), the slot is free again.
        deadline = time.monotonic() + 5
        while post(gw, CHAT, key, {**body, "stream": False}).status_code != 200:
            assert time.monotonic() < deadline, "the concurrency slot was never freed"
            time.sleep(0.2)


def test_in_flight_cap_waits_briefly_then_503(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        upstream.mode, upstream.events, upstream.event_interval = "slow", 30, 0.1
        gw = gateway_factory(engines=[upstream.url], max_in_flight=1, admission_wait_seconds=0.2)
        key = make_key()
        body = {"model": upstream.model, "messages": [{"role": "user", "content": "x"}], "stream": True,
                "max_tokens": 5}
        before = gw.metric("gateway_admission_rejections_total", reason="in_flight")
        with requests.post(gw.url + CHAT, json=body, headers=auth(key), stream=True, timeout=30) as first:
            chunks = first.iter_content(None)
            next(chunks)
            assert gw.metric("gateway_in_flight_requests") == 1
            started = time.monotonic()
            second = post(gw, CHAT, key, body)
            waited = time.monotonic() - started
        assert_openai_error(second, 503, "service_unavailable")
        assert int(second.headers["Retry-After"]) >= 1
        assert waited >= 0.2  # it did wait for a slot before giving up
        assert gw.metric("gateway_admission_rejections_total", reason="in_flight") == before + 1
        deadline = time.monotonic() + 5
        while gw.metric("gateway_in_flight_requests") != 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_health_readiness_and_metrics_are_never_limited(gateway_factory, make_key, engine):
    gw = gateway_factory(max_in_flight=1, admission_wait_seconds=0)
    for _ in range(30):
        assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200
        assert requests.get(gw.url + "/readyz", timeout=5).status_code == 200
        assert requests.get(gw.metrics_url, timeout=5).status_code == 200
