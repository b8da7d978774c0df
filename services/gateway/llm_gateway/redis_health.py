"""Whether the limiter asks Redis now: up, or down and backing off (like breaker.py for an engine).

Redis unreachable: it is not asked again until a short, growing back-off has passed (capped,
0.4 s by default), and then by a single probing call while the other callers still take the
fallback, so recovery is prompt and there is no reconnect storm. A timeout while Redis has
been answering may be the caller's own stall (a saturated event loop): only TIMEOUTS_TO_DOWN in
a row mark it down; a refused or reset connection does at once.

Time is ``time.monotonic()`` unless a clock is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

TIMEOUTS_TO_DOWN = 2


class RedisHealth:
    def __init__(self, backoff_initial_seconds: float, backoff_max_seconds: float, *, failure_mode: str = "",
                 on_down: Callable[[], None] = lambda: None, on_change: Callable[[int], None] = lambda up: None,
                 clock: Callable[[], float] = time.monotonic):
        """on_down: Redis was just marked down (again); on_change(1 | 0): the gauge's new value.
        failure_mode is only named in the log."""
        self.up: bool | None = None      # None: not asked yet
        self.down_until = 0.0            # while clock() < down_until, Redis is not asked
        self._timeouts_in_row = 0
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._backoff = backoff_initial_seconds
        self._probing = False
        self._failure_mode = failure_mode
        self._on_down = on_down
        self._on_change = on_change
        self._clock = clock

    def backing_off(self, now: float) -> bool:
        return now < self.down_until

    def may_call(self, now: float) -> bool:
        """Whether a call may go to Redis now (not backing off, no probe out)."""
        return now >= self.down_until and not self._probing

    def claim_probe(self) -> bool:
        """Before a call: while Redis is down this call is the single probe (True: end_probe() after)."""
        if self.up is False:
            self._probing = True
            return True
        return False

    def end_probe(self) -> None:
        self._probing = False

    def answered(self) -> None:
        """A call to Redis succeeded."""
        self.reachable()
        self._timeouts_in_row = 0

    def reachable(self) -> None:
        """Redis answered (a call or a ping)."""
        if self.up is not True:
            if self.up is False:
                log.warning("rate limiter: Redis reachable again")
            self.up = True
            self._on_change(1)
            self.down_until = 0.0
            self._backoff = self._backoff_initial

    def failed(self, exc: BaseException) -> None:
        """A call or a ping failed with `exc`."""
        now = self._clock()
        if isinstance(exc, (TimeoutError, RedisTimeoutError)) and self.up is True:
            self._timeouts_in_row += 1
            if self._timeouts_in_row < TIMEOUTS_TO_DOWN:
                log.warning("rate limiter: a Redis call timed out; Redis is still considered up")
                return
        if self.up is not False:
            log.warning("rate limiter: Redis unreachable (%s: %s); failure mode %r",
                        type(exc).__name__, exc, self._failure_mode)
        elif now < self.down_until:
            return                      # already backing off: do not stretch the back-off further
        self.up = False
        self._on_change(0)
        self._on_down()
        self.down_until = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)
