"""Redis going away (issue 2, point 4): the configured behaviour, never a 500, then recovery."""

from __future__ import annotations

import time

import pytest
import requests

from tests.gateway.api_helpers import CHAT, assert_openai_error, chat_body, post
from tests.support.services import ThrowawayRedis

pytestmark = pytest.mark.engine


@pytest.fixture
def throwaway_redis(log_dir):
    redis = ThrowawayRedis(log_dir).start()
    yield redis
    redis.stop()


def _until_ok(gw, key: str, model: str, timeout: float) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = post(gw, CHAT, key, chat_body(model, max_tokens=1))
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


def _readyz_becomes(gw, status: int, timeout: float = 10) -> requests.Response:
    """/readyz once it answers `status` (readiness is cached for a second)."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(gw.url + "/readyz", timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status
            return response
        time.sleep(0.2)


def test_fail_closed_answers_503_while_redis_is_down_then_recovers(gateway_factory, make_key, engine,
                                                                   throwaway_redis):
    gw = gateway_factory(redis_url=throwaway_redis.url, limiter_failure_mode="closed")
    key = make_key(rpm=1000)
    assert post(gw, CHAT, key, chat_body(engine.model, max_tokens=1)).status_code == 200

    throwaway_redis.stop()
    for _ in range(3):
        response = post(gw, CHAT, key, chat_body(engine.model, max_tokens=1))
        error = assert_openai_error(response, 503, "service_unavailable")
        assert "Rate limiting" in error["message"]
        assert int(response.headers["Retry-After"]) >= 1
    assert gw.metric("gateway_limiter_decisions_total", decision="rejected", reason="redis_unavailable") >= 3
    assert gw.metric("gateway_dependency_up", dependency="redis") == 0
    assert _readyz_becomes(gw, 503).json() == {"status": "not ready"}
    # Health is not affected by the limiter.
    assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200

    throwaway_redis.start()                       # same port: the gateway reconnects by itself
    assert _until_ok(gw, key, engine.model, 15).status_code == 200
    _readyz_becomes(gw, 200)
    assert gw.metric("gateway_dependency_up", dependency="redis") == 1


def test_local_fallback_keeps_serving_and_limiting_then_recovers(gateway_factory, make_key, engine,
                                                                 throwaway_redis):
    gw = gateway_factory(redis_url=throwaway_redis.url, limiter_failure_mode="local")
    key = make_key(rpm=3)
    throwaway_redis.stop()
    statuses = [post(gw, CHAT, key, chat_body(engine.model, max_tokens=1)).status_code for _ in range(6)]
    # The per-process limiter enforces the key's 3 requests per minute on its own.
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert gw.metric("gateway_limiter_decisions_total", decision="allowed", reason="local_fallback") == 3
    # Redis is not required for readiness in this mode: the replica keeps its place behind the edge.
    assert requests.get(gw.url + "/readyz", timeout=10).status_code == 200

    throwaway_redis.start()
    other = make_key(rpm=100)
    before = gw.metric("gateway_limiter_decisions_total", decision="allowed", reason="ok")
    assert _until_ok(gw, other, engine.model, 15).status_code == 200
    deadline = time.monotonic() + 15
    while gw.metric("gateway_limiter_decisions_total", decision="allowed", reason="ok") <= before:
        assert time.monotonic() < deadline, "the limiter never went back to Redis"
        post(gw, CHAT, other, chat_body(engine.model, max_tokens=1))
        time.sleep(0.3)
