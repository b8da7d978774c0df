"""A circuit breaker for one engine: closed -> open after N consecutive failures -> half-open probe.

The half-open probe is a single request; its verdict is recorded as soon as the engine has
answered it (status and first byte, engines.EnginePool.answered), not when its stream ends,
so one long answer cannot keep the engine shut for everyone else.

Hand-written on purpose: the gateway needs to *ask* whether an engine may take a request
(to choose among engines) separately from *recording* the outcome, which may come long
after the call returned (the end of a stream). pybreaker and friends wrap a single call
and keep those steps private.

Time is ``time.monotonic()``. One breaker per engine per worker process; nothing is shared
between processes (each learns from its own traffic within a few requests).
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, HALF_OPEN, OPEN = 0, 1, 2  # the values of the gateway_circuit_state gauge


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_seconds: float,
                 on_change: Callable[[int], None] = lambda state: None):
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._on_change = on_change
        self.state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    def available(self) -> bool:
        """Whether a request could go through now (does not claim the half-open probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return time.monotonic() >= self._opened_at + self.open_seconds
        return not self._probe_in_flight

    def claim(self) -> None:
        """The request chosen for this engine is going out: an expired open breaker turns half-open
        and this request becomes its single probe."""
        if self.state == OPEN:
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN:
            self._probe_in_flight = True

    def unclaim(self) -> None:
        """The claimed request never reached the engine: free the probe slot, learn nothing."""
        self._probe_in_flight = False

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 if it already would)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.open_seconds - time.monotonic())

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self.state != CLOSED:
            self._set(CLOSED)

    def reset(self) -> None:
        """Closed, with no failures counted: the engine proved itself some other way (it passed a
        health check after being down, which is what a half-open trial would have shown)."""
        self._failures = 0
        self._probe_in_flight = False
        if self.state != CLOSED:
            self._set(CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        self._probe_in_flight = False
        if self.state == HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = time.monotonic()
            if self.state != OPEN:
                self._set(OPEN)

    def _set(self, state: int) -> None:
        self.state = state
        self._on_change(state)
