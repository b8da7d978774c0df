"""Metrics on their own port, aggregated over the worker processes, and JSON logs that never
carry prompts, completions or keys."""

from __future__ import annotations

import json
import secrets
import time

import pytest
import requests

from tests.gateway.api_helpers import CHAT, chat_body, post
from tests.support.gateway_fixtures import key_id_of

pytestmark = pytest.mark.engine

CONTRACT = [
    "gateway_requests_total", "gateway_request_duration_seconds_count", "gateway_added_latency_seconds_count",
    "gateway_time_to_first_byte_seconds_count", "gateway_limiter_decisions_total", "gateway_in_flight_requests",
    "gateway_auth_failures_total", "gateway_circuit_state", "gateway_engine_healthy", "gateway_prompt_tokens_total",
    "gateway_completion_tokens_total", "gateway_dependency_up",
]


def test_metrics_are_served_on_their_own_port_only(gateway, make_key, engine):
    assert post(gateway, CHAT, make_key(), chat_body(engine.model, max_tokens=1)).status_code == 200
    text = gateway.metrics_text()
    for name in CONTRACT:
        assert f"\n{name}" in text, name
    assert requests.get(gateway.url + "/metrics", timeout=5).status_code == 404
    assert gateway.metric("gateway_engine_healthy", upstream=engine.url) == 1
    assert gateway.metric("gateway_circuit_state", upstream=engine.url) == 0
    # Refreshed every health-check interval by every worker (a passing hiccup heals itself).
    deadline = time.monotonic() + 10
    while not all(gateway.metric("gateway_dependency_up", dependency=d) == 1 for d in ("postgres", "redis", "engine")):
        assert time.monotonic() < deadline, gateway.metrics_text()
        time.sleep(0.2)


def test_counts_add_up_over_both_workers(gateway, make_key, engine):
    assert gateway.spec.workers == 2
    key = make_key(tier="batch")
    before = gateway.metric("gateway_requests_total", route=CHAT, status="200", tier="batch")
    prompt_before = gateway.metric("gateway_prompt_tokens_total", tier="batch")
    completion_before = gateway.metric("gateway_completion_tokens_total", tier="batch")
    added_before = gateway.metric("gateway_added_latency_seconds_count", route=CHAT)
    prompt = completion = 0
    for _ in range(12):
        usage = post(gateway, CHAT, key, chat_body(engine.model, max_tokens=2)).json()["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    assert gateway.settled_metric("gateway_requests_total", before + 12, route=CHAT, status="200",
                                  tier="batch") == before + 12
    time.sleep(0.2)   # the books (token counters) close just after the answer is sent
    assert gateway.metric("gateway_prompt_tokens_total", tier="batch") == prompt_before + prompt
    assert gateway.metric("gateway_completion_tokens_total", tier="batch") == completion_before + completion
    assert gateway.metric("gateway_added_latency_seconds_count", route=CHAT) == added_before + 12


def test_unknown_paths_share_one_label(gateway):
    for _ in range(3):
        requests.get(gateway.url + "/random-" + secrets.token_hex(4), timeout=5)
    text = gateway.metrics_text()
    assert 'route="other"' in text
    assert "random-" not in text


def test_logs_are_json_with_request_ids_and_never_prompts_or_keys(gateway, make_key, engine):
    key = make_key()
    secret_prompt = "confidential-" + secrets.token_hex(8)
    response = post(gateway, CHAT, key, chat_body(engine.model, content=secret_prompt, max_tokens=3),
                    headers={"X-Request-ID": "log-check-" + secrets.token_hex(4)})
    completion = response.json()["choices"][0]["message"]["content"]
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while request_id not in gateway.log_text():
        assert time.monotonic() < deadline, "no access line"
        time.sleep(0.1)
    text = gateway.log_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    # The client's id is logged beside the gateway's own.
    access = [line for line in lines if line.get("client_request_id") == request_id]
    assert access and access[0]["request_id"] != request_id and len(access[0]["request_id"]) == 32
    assert access[0]["status"] == 200 and access[0]["key_id"] == key_id_of(key)
    assert access[0]["route"] == CHAT and access[0]["model"] == engine.model
    assert secret_prompt not in text
    assert key.split("-")[2] not in text                     # the key's secret part
    if len(completion) > 8:
        assert completion not in text


def test_a_logged_exception_keeps_its_traceback():
    """The queue handler renders a traceback into exc_text on the way to the writer thread; the
    JSON line must carry it (it was dropped, so 'unhandled error' lines had no cause)."""
    import logging

    from llm_gateway.logging_setup import JsonFormatter, _PassThroughQueueHandler

    try:
        raise RuntimeError("the cause")
    except RuntimeError:
        import sys
        record = logging.LogRecord("llm_gateway.app", logging.ERROR, __file__, 1, "unhandled error", None,
                                   sys.exc_info())
    prepared = _PassThroughQueueHandler(None).prepare(record)
    line = json.loads(JsonFormatter().format(prepared))
    assert "RuntimeError: the cause" in line["exc"]
