"""breaker.CircuitBreaker: closed -> open after N failures -> one half-open probe -> closed or open."""

from __future__ import annotations

import types

import pytest

from llm_gateway import breaker
from llm_gateway.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


@pytest.fixture
def clock(monkeypatch):
    """The breaker's time.monotonic(), moved by hand (only the breaker module sees it)."""
    now = types.SimpleNamespace(t=1000.0)
    monkeypatch.setattr(breaker, "time", types.SimpleNamespace(monotonic=lambda: now.t))
    return now


def test_opens_after_threshold_consecutive_failures_and_a_success_resets_the_count(clock):
    changes = []
    b = CircuitBreaker(3, 5.0, on_change=changes.append)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state == CLOSED and b.available()
    b.record_failure()
    assert b.state == OPEN and not b.available() and changes == [OPEN]
    assert b.retry_after() == 5.0


def test_open_lets_one_probe_through_after_open_seconds(clock):
    b = CircuitBreaker(1, 5.0)
    b.record_failure()
    clock.t += 4.0
    assert not b.available() and b.retry_after() == pytest.approx(1.0)
    clock.t += 1.0
    assert b.available() and b.retry_after() == 0.0
    b.claim()
    assert b.state == HALF_OPEN and not b.available()      # the single probe is out
    b.unclaim()                                             # it never reached the engine
    assert b.available()


@pytest.mark.parametrize("succeeds, state", [(True, CLOSED), (False, OPEN)])
def test_the_probes_verdict_closes_or_reopens(clock, succeeds, state):
    changes = []
    b = CircuitBreaker(2, 5.0, on_change=changes.append)
    b.record_failure()
    b.record_failure()
    clock.t += 5.0
    b.claim()
    b.record_success() if succeeds else b.record_failure()
    assert b.state == state and changes == [OPEN, HALF_OPEN, state]
    if not succeeds:
        assert b.retry_after() == 5.0                      # a failed probe opens it for a whole period again


def test_reset_closes_without_a_probe(clock):
    b = CircuitBreaker(1, 5.0)
    b.record_failure()
    b.reset()
    assert b.state == CLOSED and b.available()
    b.record_failure()                                      # the count started again from zero
    assert b.state == OPEN
