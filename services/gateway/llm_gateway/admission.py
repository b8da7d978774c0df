"""Admission control: a per-process cap on requests in flight, with a short bounded wait.

Beyond `max_in_flight` a request waits up to `admission_wait_seconds` for a slot (absorbing
a brief burst), then gets 503 with Retry-After. The per-key concurrency cap shared by all
replicas is the rate limiter's job (limiter.py); this one protects the process itself.
"""

from __future__ import annotations

import asyncio

from . import metrics
from .errors import ServiceUnavailable

_rejected = metrics.ADMISSION_REJECTIONS.labels("in_flight")


class Admission:
    def __init__(self, max_in_flight: int, wait_seconds: float):
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wait_seconds = wait_seconds

    async def enter(self) -> None:
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), self._wait_seconds)
            except TimeoutError:
                _rejected.inc()
                raise ServiceUnavailable("The gateway is at capacity; retry shortly.", reason="in_flight",
                                         retry_after=1) from None
        else:
            await self._slots.acquire()  # a free slot: returns at once
        metrics.IN_FLIGHT.inc()

    def leave(self) -> None:
        metrics.IN_FLIGHT.dec()
        self._slots.release()
