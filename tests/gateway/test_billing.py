"""What a request is billed (usage_records) and what it keeps of its rate-limit reservation, when
the engine never got it or its answer could not be relayed."""

from __future__ import annotations

import subprocess

import pytest
import redis

from llm_gateway.limiter_scripts import limiter_keys
from tests.gateway.api_helpers import CHAT, assert_openai_error, post
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.gateway_fixtures import key_id_of

pytestmark = pytest.mark.engine

TPM = 6000


def _body(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000, **fields}


def _tokens_left(gw, key: str) -> float:
    """The key's token bucket as last written (no refill added): a reservation given back shows."""
    client = redis.Redis.from_url(gw.redis_url)
    try:
        return float(client.hget(limiter_keys(key_id_of(key)).bucket, "tl"))
    finally:
        client.close()


def _usage_rows(gw, key: str) -> list[tuple[int, int, int]]:
    """(status, prompt_tokens, completion_tokens) of the key's usage records."""
    out = subprocess.run(["psql", gw.database_url, "-AtF,", "-c",
                          "SELECT status, prompt_tokens, completion_tokens FROM usage_records "
                          f"WHERE key_id = '{key_id_of(key)}'"],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(int(v) for v in line.split(",")) for line in out.splitlines() if line]


def test_a_request_the_engine_refused_to_connect_is_not_billed(gateway_factory, make_key):
    upstream = FlakyUpstream().start()
    try:
        # Health checks a minute apart: the gateway still takes the engine for healthy when it is gone.
        gw = gateway_factory(engines=[upstream.url], health_check_interval_seconds=60)
        key = make_key(tpm=TPM)
        upstream.stop()
        assert_openai_error(post(gw, CHAT, key, _body(upstream.model)), 503, "engine_unavailable")
        assert _tokens_left(gw, key) == TPM          # the reservation (1,000+ tokens) was given back
        gw.stop()                                    # a graceful stop writes every queued usage record
        assert _usage_rows(gw, key) == []
    finally:
        upstream.stop()


def test_an_answer_too_large_to_hold_is_a_502_billed_as_cut_short(gateway_factory, make_key):
    """A non-streaming answer is held whole before it is relayed, so its size
    is bounded (GATEWAY_MAX_BUFFERED_RESPONSE_BYTES, 16 MiB by default). A larger one is a clear
    502; the engine did its work (its breaker hears a success, the key keeps its reservation and
    the record has the prompt estimate), but no answer was delivered, so no completion is billed."""
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url], circuit_failure_threshold=1)
        key = make_key(tpm=TPM)
        upstream.answer_padding = 17 * 1024 * 1024
        error = assert_openai_error(post(gw, CHAT, key, _body(upstream.model)), 502, "response_too_large")
        assert "stream" in error["message"]
        assert _tokens_left(gw, key) < TPM - 1000                    # the reservation is kept
        assert gw.metric("gateway_upstream_errors_total", upstream=upstream.url) == 0
        upstream.answer_padding = 1024
        ok = post(gw, CHAT, key, _body(upstream.model))               # the breaker stayed closed
        assert ok.status_code == 200 and len(ok.content) > 1024
        gw.stop()
        big, fine = sorted(_usage_rows(gw, key), reverse=True)
        assert fine == (200, 3, 1)                                     # the engine's usage
        assert big[0] == 502 and big[1] > 0 and big[2] == 0            # prompt estimate, no completion


@pytest.mark.parametrize("mode", ["drop", "drop_mid_answer"])
def test_a_request_the_engine_dropped_before_answering_is_a_503_billed_as_cut_short(gateway_factory, make_key,
                                                                                      mode):
    """An engine that dies while working on a non-streaming request (the connection is dropped
    before its answer is complete) is a failure of the service the client should retry: 503
    `engine_unavailable` with Retry-After, like a refused connection, not a 502. The lost
    connection is sent once more (the gateway cannot tell it from a dead pooled connection);
    lost again, the engine did receive it, so it is billed as cut short: the reservation is kept,
    the record has the prompt estimate, and the engine is charged a failure (stream_broken)."""
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url], health_check_interval_seconds=60)
        key = make_key(tpm=TPM)
        upstream.mode = mode
        response = post(gw, CHAT, key, _body(upstream.model))
        assert_openai_error(response, 503, "engine_unavailable")
        assert response.headers["retry-after"] == "1"
        assert _tokens_left(gw, key) < TPM - 1000                    # the reservation is kept
        assert gw.metric("gateway_upstream_errors_total", upstream=upstream.url, kind="stream_broken") == 1
        gw.stop()
        [(status, prompt, completion)] = _usage_rows(gw, key)
        assert status == 503 and prompt > 0 and completion == 0
