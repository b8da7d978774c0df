"""The limiter's arithmetic: the Redis key names, the named reply, reconciliation of reserved
against actual tokens, remembered rejections moving on in time, and the x-ratelimit-* headers.
No Redis: the reservation path is driven through the local fallback."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from llm_gateway.errors import RateLimited
from llm_gateway.keys import ApiKey
from llm_gateway.limiter import RateLimiter, Reservation, aged_reply
from llm_gateway.limiter_scripts import ALLOWED, KEY_PREFIX, OVER_RPM, OVER_TPM, Reply, limiter_keys
from llm_gateway.ratelimit_headers import format_duration, rate_limit_headers


def test_one_builder_names_both_keys_in_one_cluster_slot():
    keys = limiter_keys("abc123")
    assert keys == ("rl:v1:{abc123}:b", "rl:v1:{abc123}:c")
    assert (keys.bucket, keys.leases) == keys and all(k.startswith(KEY_PREFIX) for k in keys)


def test_the_reply_names_the_scripts_answer():
    reply = Reply._make([1, 0, 2000, 50, 1000, 1500, 3])       # as redis-py hands it over: a list
    assert (reply.verdict, reply.retry_after_ms, reply.leases_held) == (OVER_RPM, 1500, 3)


@pytest.mark.parametrize("ms, text", [
    (0, "0s"), (-5, "0s"), (20, "20ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"), (17_250, "17.25s"),
    (60_000, "1m0s"), (360_000, "6m0s"), (61_500, "1m1.5s"), (3_723_000, "1h2m3s"), (0.2, "1ms"),
])
def test_reset_duration_format(ms, text):
    assert format_duration(ms) == text


def test_headers_name_only_the_limits_the_key_has():
    reply = Reply(ALLOWED, 4, 12_000, 900, 6_000, 0, 1)
    assert rate_limit_headers(5, 1000, reply, rejected=False) == {
        "x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "12s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6s"}
    assert rate_limit_headers(0, 1000, reply, rejected=False).keys() == {
        "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}
    assert rate_limit_headers(0, 0, reply, rejected=False) == {}


def test_a_refusal_adds_retry_after_in_whole_seconds_and_ms_and_never_a_negative_remaining():
    reply = Reply(OVER_TPM, 3, 1000, -40, 64_000, 1_200, 0)
    headers = rate_limit_headers(5, 100, reply, rejected=True)
    assert headers["Retry-After"] == "2" and headers["retry-after-ms"] == "1200"
    assert headers["x-ratelimit-remaining-tokens"] == "0" and headers["x-ratelimit-reset-tokens"] == "1m4s"
    assert rate_limit_headers(5, 0, reply._replace(retry_after_ms=0), rejected=True)["Retry-After"] == "1"


def test_reconciliation_gives_back_the_unused_tokens_once_and_charges_overuse():
    res = Reservation("k", "r", 500, "redis", {}, tpm=1000)
    assert res.settle_tokens(120) == 380
    assert res.settle_tokens(120) == 0               # a second reconcile gives nothing back twice
    assert res.settle_tokens(200) == -80             # used more than the earlier figure: charged
    assert res.settle_tokens(None) == 0              # no usage known: keep the reservation
    assert Reservation("k", "r", 500, "redis", {}, tpm=0).settle_tokens(1) == 0   # no token limit
    assert Reservation("k", "r", 5, "redis", {}, tpm=10).settle_tokens(-3) == 5   # nonsense usage counts as 0


def test_a_lease_is_freed_once():
    res = Reservation("k", "r", 0, "redis", {}, lease_id="p:1")
    assert res.take_lease() == "p:1" and res.take_lease() == ""
    assert Reservation("k", "r", 0, "redis", {}).take_lease() == ""


def test_a_remembered_rejection_moves_on_in_time():
    reply = Reply(OVER_RPM, 0, 30_000, 100, 50_000, 20_000, 2)
    aged = aged_reply(reply, 5_000, tpm=600)
    assert aged == Reply(OVER_RPM, 0, 25_000, 150, 45_000, 15_000, 2)     # 600/min refills 50 in 5 s
    assert aged_reply(reply, 60_000, tpm=600).tokens_left == 600            # never above the limit
    assert aged_reply(reply, 60_000, tpm=0) == Reply(OVER_RPM, 0, 0, 100, 0, 0, 2)


def make_key(**limits) -> ApiKey:
    fields = dict(rpm=None, tpm=None, max_concurrent=None, max_tokens=None) | limits
    return ApiKey(id=uuid.uuid4().hex[:16], name="unit", tier="standard", models=(), expires_at=None,
                  revoked=False, **fields)


@pytest.fixture
def limiter_without_redis():
    """A limiter in failure mode "local" whose Redis is marked down for a minute: never called.
    (Creating a redis-py client opens no connection.)"""
    limiter = RateLimiter(aioredis.Redis.from_url("redis://127.0.0.1:9/0"), "local",
                          backoff_initial_seconds=60, backoff_max_seconds=60)
    limiter._health.failed(ConnectionRefusedError())
    return limiter


async def test_reserve_and_finish_reconcile_the_tokens_bucket(limiter_without_redis):
    limiter, key = limiter_without_redis, make_key(rpm=10, tpm=1000)
    first = await limiter.reserve(key, "r1", 600)
    assert first.mode == "local" and first.headers["x-ratelimit-remaining-tokens"] == "400"
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    await limiter.finish(first, 100)                 # 500 of the 600 back
    second = await limiter.reserve(key, "r2", 800)
    assert second.headers["x-ratelimit-remaining-tokens"] == "100"
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve(key, "r3", 200)
    assert refused.value.status == 429 and refused.value.reason == "tpm"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "8"   # a refusal takes no request


async def test_a_request_larger_than_the_token_limit_is_refused_outright(limiter_without_redis):
    with pytest.raises(RateLimited) as refused:
        await limiter_without_redis.reserve(make_key(tpm=100), "r", 101)
    assert refused.value.headers == {"x-ratelimit-limit-tokens": "100"}


async def test_concurrency_is_freed_by_finish(limiter_without_redis):
    limiter, key = limiter_without_redis, make_key(max_concurrent=1)
    held = await limiter.reserve(key, "r1", 0)
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve(key, "r2", 0)
    assert refused.value.reason == "concurrency" and refused.value.headers["Retry-After"] == "1"
    await limiter.finish(held, None)
    await limiter.finish(held, None)                 # idempotent
    assert (await limiter.reserve(key, "r3", 0)).lease_id
