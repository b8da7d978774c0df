"""local_limiter.LocalLimiter: the per-process fallback answers as limiter_v1.lua does."""

from __future__ import annotations

import types

import pytest

from llm_gateway.limiter_scripts import ALLOWED, OVER_CONCURRENCY, OVER_RPM, OVER_TPM, Reply
from llm_gateway.local_limiter import LocalLimiter


@pytest.fixture
def clock():
    return types.SimpleNamespace(t=100.0)


@pytest.fixture
def local(clock):
    return LocalLimiter(clock=lambda: clock.t)


def test_requests_bucket_empties_then_refills_at_rpm_a_minute(local, clock):
    assert local.reserve("k", 2, 0, 0, 0, "") == Reply(ALLOWED, 1, 30_000, 0, 0, 0, 0)
    assert local.reserve("k", 2, 0, 0, 0, "") == Reply(ALLOWED, 0, 60_000, 0, 0, 0, 0)
    refused = local.reserve("k", 2, 0, 0, 0, "")
    assert refused.verdict == OVER_RPM and refused.retry_after_ms == 30_000   # one request refills in 30 s
    clock.t += 15
    assert local.reserve("k", 2, 0, 0, 0, "").retry_after_ms == 15_000
    clock.t += 15
    assert local.reserve("k", 2, 0, 0, 0, "").verdict == ALLOWED
    assert local.reserve("other", 2, 0, 0, 0, "").verdict == ALLOWED        # buckets are per key


def test_tokens_bucket_takes_the_reservation_and_says_when_it_would_fit(local, clock):
    assert local.reserve("k", 0, 600, 0, 500, "") == Reply(ALLOWED, 0, 0, 100, 50_000, 0, 0)
    refused = local.reserve("k", 0, 600, 0, 200, "")
    assert refused.verdict == OVER_TPM and refused.tokens_left == 100
    assert refused.retry_after_ms == 10_000          # 100 tokens missing at 600 a minute
    clock.t += 10
    assert local.reserve("k", 0, 600, 0, 200, "").verdict == ALLOWED


def test_a_refused_request_takes_nothing(local):
    local.reserve("k", 5, 100, 0, 100, "")
    refused = local.reserve("k", 5, 100, 0, 50, "")
    assert refused.verdict == OVER_TPM and refused.requests_left == 4        # the request was not counted


def test_concurrency_leases_are_held_until_released(local):
    assert local.reserve("k", 0, 0, 2, 0, "a").leases_held == 1
    assert local.reserve("k", 0, 0, 2, 0, "b").leases_held == 2
    refused = local.reserve("k", 0, 0, 2, 0, "c")
    assert refused.verdict == OVER_CONCURRENCY and refused.retry_after_ms == 1000
    local.release("k", "a")
    local.release("k", "a")                          # twice: nothing more is freed
    assert local.reserve("k", 0, 0, 2, 0, "c").verdict == ALLOWED
    assert local.reserve("k", 0, 0, 2, 0, "d").verdict == OVER_CONCURRENCY


def test_give_back_returns_unused_tokens_and_charges_overuse_capped_at_the_limit(local):
    local.reserve("k", 0, 1000, 0, 800, "")
    local.give_back("k", 1000, 500)                  # reserved 800, used 300
    assert local.reserve("k", 0, 1000, 0, 0, "").tokens_left == 700
    local.give_back("k", 1000, -200)                 # used 200 more than reserved
    assert local.reserve("k", 0, 1000, 0, 0, "").tokens_left == 500
    local.give_back("k", 1000, 10_000)
    assert local.reserve("k", 0, 1000, 0, 0, "").tokens_left == 1000   # never above the limit
