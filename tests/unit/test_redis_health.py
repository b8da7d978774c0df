"""redis_health.RedisHealth: when the limiter asks Redis, and when it backs off."""

from __future__ import annotations

import types

from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_gateway.redis_health import TIMEOUTS_TO_DOWN, RedisHealth


def make(clock):
    events = []
    health = RedisHealth(0.1, 0.4, on_down=lambda: events.append("down"), on_change=events.append,
                         clock=lambda: clock.t)
    return health, events


def test_a_refused_connection_marks_redis_down_with_a_growing_capped_backoff():
    clock = types.SimpleNamespace(t=0.0)
    health, events = make(clock)
    assert health.may_call(0.0) and not health.claim_probe()
    health.failed(ConnectionRefusedError())
    assert health.up is False and events == [0, "down"]
    backoffs = []
    for _ in range(4):
        assert not health.may_call(clock.t)
        backoffs.append(round(health.down_until - clock.t, 3))
        clock.t = health.down_until
        assert health.may_call(clock.t) and health.claim_probe()         # one probe at a time
        assert not health.may_call(clock.t)
        health.end_probe()
        health.failed(ConnectionRefusedError())
    assert backoffs == [0.1, 0.2, 0.4, 0.4]


def test_a_failure_while_backing_off_does_not_stretch_the_backoff():
    clock = types.SimpleNamespace(t=0.0)
    health, _ = make(clock)
    health.failed(OSError())
    until = health.down_until
    clock.t = 0.05
    health.failed(OSError())
    assert health.down_until == until


def test_recovery_resets_the_backoff():
    clock = types.SimpleNamespace(t=0.0)
    health, events = make(clock)
    health.failed(OSError())
    clock.t = health.down_until
    health.failed(OSError())
    health.answered()
    assert health.up is True and health.may_call(clock.t) and events[-1] == 1
    health.failed(OSError())
    assert round(health.down_until - clock.t, 3) == 0.1


def test_timeouts_mark_an_answering_redis_down_only_in_a_row():
    clock = types.SimpleNamespace(t=0.0)
    health, _ = make(clock)
    health.answered()
    for _ in range(TIMEOUTS_TO_DOWN - 1):
        health.failed(RedisTimeoutError())
        assert health.up is True
    health.answered()                                # an answer in between: the count starts again
    for _ in range(TIMEOUTS_TO_DOWN - 1):
        health.failed(TimeoutError())
    assert health.up is True
    health.failed(TimeoutError())
    assert health.up is False
