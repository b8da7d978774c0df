"""The engine pool: health checks, least-outstanding choice, circuit
breaker, fast 503 for a dead engine, request timeout."""

from __future__ import annotations

import time

import pytest
import requests

from tests.gateway.api_helpers import CHAT, assert_openai_error, auth, post, raw_request
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.procs import free_port

pytestmark = pytest.mark.engine


def _body(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **fields}


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_dead_engine_gives_a_fast_503_with_retry_after(gateway_factory, make_key, engine):
    dead = f"http://127.0.0.1:{free_port()}"       # nothing listens there
    gw = gateway_factory(engines=[dead], wait_ready=False)
    ready = requests.get(gw.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json() == {"status": "not ready"}
    assert gw.metric("gateway_engine_healthy", upstream=dead) == 0      # the details: metrics port only
    key = make_key()
    for _ in range(3):
        started = time.monotonic()
        response = post(gw, CHAT, key, _body(engine.model))
        assert time.monotonic() - started < 1.0
        assert_openai_error(response, 503, "service_unavailable")
        assert int(response.headers["Retry-After"]) >= 1
    assert gw.metric("gateway_engine_healthy", upstream=dead) == 0
    assert gw.metric("gateway_dependency_up", dependency="engine") == 0


def test_engine_dying_is_noticed_and_answered_with_fast_503(gateway_factory, make_key):
    upstream = FlakyUpstream().start()
    try:
        gw = gateway_factory(engines=[upstream.url], health_check_interval_seconds=0.5)
        key = make_key()
        assert post(gw, CHAT, key, _body(upstream.model)).status_code == 200
        upstream.stop()                             # the engine is gone
        before = gw.metric("gateway_admission_rejections_total", reason="no_healthy_engine")
        statuses = []
        for _ in range(4):
            started = time.monotonic()
            response = post(gw, CHAT, key, _body(upstream.model))
            assert time.monotonic() - started < 1.0
            statuses.append(response.status_code)
            assert_openai_error(response, 503)
            assert int(response.headers["Retry-After"]) >= 1
        assert gw.metric("gateway_admission_rejections_total", reason="no_healthy_engine") > before
        assert gw.metric("gateway_engine_healthy", upstream=upstream.url) == 0
        _wait(lambda: requests.get(gw.url + "/readyz", timeout=10).status_code == 503, 5,
              "readiness (cached for a second) never turned")
    finally:
        upstream.stop()


def test_circuit_opens_after_consecutive_failures_then_recovers_half_open(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url], circuit_failure_threshold=3, circuit_open_seconds=1.0)
        key = make_key()
        upstream.mode = "status_500"
        for _ in range(3):
            assert_openai_error(post(gw, CHAT, key, _body(upstream.model)), 502, "upstream_error")
        assert gw.metric("gateway_circuit_state", upstream=upstream.url) == 2          # open
        assert gw.metric("gateway_upstream_errors_total", upstream=upstream.url, kind="status_5xx") == 3
        sent = upstream.completions_started
        response = post(gw, CHAT, key, _body(upstream.model))
        assert_openai_error(response, 503)                                              # refused at once
        assert upstream.completions_started == sent                                    # never sent
        upstream.mode = "ok"
        time.sleep(1.2)                                                                 # open period over
        assert post(gw, CHAT, key, _body(upstream.model)).status_code == 200          # the half-open probe
        assert gw.metric("gateway_circuit_state", upstream=upstream.url) == 0          # closed again


def test_least_outstanding_requests_goes_to_the_idle_engine(gateway_factory, make_key):
    with FlakyUpstream() as busy, FlakyUpstream() as idle:
        for upstream in (busy, idle):   # streams are slow; plain answers come at once
            upstream.mode, upstream.events, upstream.event_interval = "slow", 40, 0.1
        gw = gateway_factory(engines=[busy.url, idle.url])
        key = make_key()
        # Occupy one engine with a long stream (whichever it gets, the other is then "idle").
        holder = requests.post(gw.url + CHAT, json=_body(busy.model, stream=True), headers=auth(key), stream=True,
                               timeout=30)
        chunks = holder.iter_content(None)
        next(chunks)
        occupied, free = (busy, idle) if busy.completions_started else (idle, busy)
        before_free = free.completions_started
        for _ in range(6):
            assert post(gw, CHAT, key, _body(busy.model)).status_code == 200
        assert free.completions_started == before_free + 6
        assert occupied.completions_started == 1
        holder.close()


def test_request_timeout_aborts_upstream_with_504(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        upstream.mode = "hang"
        gw = gateway_factory(engines=[upstream.url], request_timeout_seconds=1.0)
        started = time.monotonic()
        response = post(gw, CHAT, make_key(), _body(upstream.model))
        assert_openai_error(response, 504, "upstream_timeout")
        assert 0.9 < time.monotonic() - started < 5
        _wait(lambda: upstream.connections_closed_early == 1, 5, "the upstream request was not aborted")
        assert gw.metric("gateway_upstream_errors_total", upstream=upstream.url, kind="timeout") == 1


def _open_breaker(gw, key, upstream, failures: int) -> None:
    upstream.mode = "status_500"
    for _ in range(failures):
        assert_openai_error(post(gw, CHAT, key, _body(upstream.model)), 502, "upstream_error")
    assert gw.metric("gateway_circuit_state", upstream=upstream.url) == 2          # open


def test_a_long_half_open_trial_ends_when_the_engine_answers_not_when_its_stream_ends(gateway_factory, make_key):
    """The trial request's verdict is its first byte; a stream that then goes
    on for minutes must not keep the engine shut for everyone else."""
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url], circuit_failure_threshold=1, circuit_open_seconds=0.5)
        key = make_key()
        _open_breaker(gw, key, upstream, 1)
        upstream.mode, upstream.events, upstream.event_interval = "slow", 600, 0.1      # a minute-long stream
        deadline = time.monotonic() + 10
        while True:       # 503 until the open period is over; then this stream is the trial
            trial = raw_request(gw, key, _body(upstream.model, stream=True))
            head = trial.recv(65536)
            if b" 200 OK" in head.split(b"\r\n")[0]:
                break
            assert b" 503 " in head.split(b"\r\n")[0] and time.monotonic() < deadline, head[:200]
            trial.close()
            time.sleep(0.1)
        try:
            while b"data: " not in head:                                                # the engine answered
                head += trial.recv(65536)
            assert gw.metric("gateway_circuit_state", upstream=upstream.url) == 0      # closed
            assert post(gw, CHAT, key, _body(upstream.model)).status_code == 200      # others get through
            assert upstream.connections_closed_early == 0                             # the trial still streams
        finally:
            trial.close()



def test_a_slow_reader_never_counts_against_the_engine(gateway_factory, make_key):
    """Time the relay spends blocked on a client that reads slowly is not the
    engine's; with a request timeout shorter than the client's pause, the stream still completes
    and the engine's breaker (one failure opens it here) stays closed."""
    with FlakyUpstream() as upstream:
        # ~26 MB, far beyond what the sockets between the engine, the gateway and the client buffer.
        upstream.events, upstream.event_padding = 400, 65536
        gw = gateway_factory(engines=[upstream.url], request_timeout_seconds=2.0, circuit_failure_threshold=1)
        key = make_key()
        with requests.post(gw.url + CHAT, json=_body(upstream.model, stream=True), headers=auth(key), stream=True,
                           timeout=60) as response:
            chunks = response.iter_content(65536)
            first = next(chunks)
            time.sleep(5)                     # the client stops reading for longer than the timeout
            body = first + b"".join(chunks)
        assert body.rstrip().endswith(b"data: [DONE]"), body[-300:]
        assert gw.metric("gateway_upstream_errors_total", upstream=upstream.url) == 0
        assert gw.metric("gateway_circuit_state", upstream=upstream.url) == 0
        assert post(gw, CHAT, key, _body(upstream.model)).status_code == 200


def test_a_restarted_engine_takes_traffic_again_without_waiting_for_its_breaker(gateway_factory, make_key):
    """An engine that was down is probed until it is back, and passing that
    probe closes the breaker its absence opened. Health checks and the open period are set to a
    minute here, so only that can bring it back within the test."""
    upstream = FlakyUpstream().start()
    port = upstream.port
    try:
        gw = gateway_factory(engines=[upstream.url], health_check_interval_seconds=60,
                             circuit_failure_threshold=1, circuit_open_seconds=60)
        key = make_key()
        assert post(gw, CHAT, key, _body(upstream.model)).status_code == 200
        upstream.stop()
        assert_openai_error(post(gw, CHAT, key, _body(upstream.model)), 503)   # refused: down, breaker open
        assert gw.metric("gateway_circuit_state", upstream=upstream.url) == 2
        upstream = FlakyUpstream()
        upstream.port = port
        upstream.start()
        _wait(lambda: post(gw, CHAT, key, _body(upstream.model)).status_code == 200, 20,
              "the restarted engine was never used again")
        assert gw.metric("gateway_circuit_state", upstream=upstream.url) == 0
    finally:
        upstream.stop()
