"""Exact prompt counting: the work one request can make the engine do before
it is served is bounded, starts only after the rate limiter admitted the request, and stops when
the client leaves. The fake engine counts its /tokenize calls; vLLM cannot report them."""

from __future__ import annotations

import json
import socket
import time

import pytest

from llm_gateway.tokens import COUNT_CONCURRENCY
from llm_gateway.validation import MAX_PROMPTS
from tests.gateway.api_helpers import COMPLETIONS, assert_openai_error, post
from tests.support.flaky_upstream import FlakyUpstream

pytestmark = pytest.mark.engine


def _wait(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_prompt_list_longer_than_vllm_accepts_is_400_and_nothing_is_counted(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url])
        # No max_tokens and no key cap: every prompt would need an exact count.
        body = {"model": upstream.model, "prompt": ["a few words"] * (MAX_PROMPTS + 1)}
        error = assert_openai_error(post(gw, COMPLETIONS, make_key(), body), 400)
        assert error["param"] == "prompt" and str(MAX_PROMPTS) in error["message"]
        assert upstream.tokenize_calls == 0
        assert upstream.completions_started == 0


def test_a_key_over_its_request_limit_costs_the_engine_nothing(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url])
        key = make_key(rpm=1)
        assert post(gw, COMPLETIONS, key, {"model": upstream.model, "prompt": "x", "max_tokens": 1}).status_code == 200
        assert upstream.tokenize_calls == 0          # settled by the byte bound
        # No max_tokens: the room left for the completion needs the exact counts.
        body = {"model": upstream.model, "prompt": ["some text"] * 50}
        assert_openai_error(post(gw, COMPLETIONS, key, body), 429, "rate_limit_exceeded")
        assert upstream.tokenize_calls == 0


def test_counting_stops_when_the_client_hangs_up(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        upstream.hold_tokenize = True                 # every count waits until its caller leaves
        gw = gateway_factory(engines=[upstream.url])
        before = gw.metric("gateway_requests_total", route=COMPLETIONS, status="499")
        payload = json.dumps({"model": upstream.model, "prompt": ["some text"] * 200}).encode()
        sock = socket.create_connection(("127.0.0.1", gw.spec.port), timeout=30)
        sock.sendall(b"POST " + COMPLETIONS.encode() + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + make_key().encode() + b"\r\nContent-Length: "
                     + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        _wait(lambda: upstream.tokenize_calls >= 1, "the gateway never asked the engine to count")
        sock.close()
        # The gateway notices, ends the request as 499 and drops the counts in flight.
        _wait(lambda: gw.metric("gateway_requests_total", route=COMPLETIONS, status="499") == before + 1,
              "the request was not ended when its client hung up")
        calls = upstream.tokenize_calls
        assert calls <= COUNT_CONCURRENCY
        _wait(lambda: upstream.tokenize_abandoned == calls, "counts in flight were not dropped")
        assert upstream.completions_started == 0


def test_max_tokens_that_leave_no_room_for_any_prompt_are_refused_without_counting(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url])
        body = {"model": upstream.model, "prompt": "x", "max_tokens": upstream.max_model_len}
        error = assert_openai_error(post(gw, COMPLETIONS, make_key(), body), 400, "context_length_exceeded")
        assert f"maximum context length is {upstream.max_model_len} tokens" in error["message"]
        assert upstream.tokenize_calls == 0
