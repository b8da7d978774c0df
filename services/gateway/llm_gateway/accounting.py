"""Closing the books of a request: everything it held is given back, exactly once.

Once the limiter has admitted a request it holds a reservation (tokens, a concurrency
lease), then an admission slot and an engine. `Books.close()` runs when the answer is
complete -- after the last byte for streams, after the response is sent otherwise, or on any
failure -- and:
- hands the engine back, with the outcome for its circuit breaker (a success was already told
  the breaker when the engine answered: `engine_answered()`, at the first byte);
- leaves the admission slot;
- queues the usage record (UsageRecorder batches it to PostgreSQL off the hot path) and
  counts the tokens in gateway_prompt/completion_tokens_total;
- reconciles the reservation with the real usage and frees the lease (one Redis call).

Billing. A request the engine never received -- refused before it was sent (no engine, limits,
admission, validation), or a connection the engine refused ("connect": nothing was written to
it) -- is not billed: no usage record, and its token reservation is given back in full. One
the engine received:
- with the engine's usage: billed that usage;
- refused by the engine (4xx): a record with no tokens, reservation given back;
- cut short (client gone -- even before the engine answered, since it was already working on
  it --, engine failed): keeps its reservation, and its record carries estimates: the prompt
  estimate and one completion token per streamed event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
from prometheus_client import Counter

from . import metrics
from .admission import Admission
from .engines import Engine, EnginePool
from .failures import FailureKind
from .keys import ApiKey
from .limiter import RateLimiter, Reservation
from .usage import UsageRecorder
from .validation import Plan

log = logging.getLogger(__name__)


class Accounting:
    """Opens books for admitted requests and knows how many are still open (for draining)."""

    def __init__(self, limiter: RateLimiter, admission: Admission, engines: EnginePool, usage: UsageRecorder):
        self.limiter = limiter
        self.admission = admission
        self.engines = engines
        self.usage = usage
        self.open_count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # (tier, model) -> (prompt counter, completion counter)
        self._tokens: dict[tuple[str, str], tuple[Counter, Counter]] = {}

    def open(self, key: ApiKey, plan: Plan, reservation: Reservation, request_id: str,
             client_request_id: str | None = None) -> Books:
        self.open_count += 1
        self._idle.clear()
        return Books(self, key, plan, reservation, request_id, client_request_id)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every open book is closed; False if some are still open after `timeout`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _closed(self) -> None:
        self.open_count -= 1
        if self.open_count == 0:
            self._idle.set()

    def count_tokens(self, tier: str, model: str, prompt: int, completion: int) -> None:
        counters = self._tokens.get((tier, model))
        if counters is None:
            counters = self._tokens[(tier, model)] = (metrics.PROMPT_TOKENS.labels(tier, model),
                                                      metrics.COMPLETION_TOKENS.labels(tier, model))
        counters[0].inc(prompt)
        counters[1].inc(completion)


class Books:
    __slots__ = (
        "_acc",
        "_closed",
        "admitted",
        "answered",
        "client_request_id",
        "engine",
        "key",
        "plan",
        "reached",
        "request_id",
        "reservation",
    )

    def __init__(self, acc: Accounting, key: ApiKey, plan: Plan, reservation: Reservation, request_id: str,
                 client_request_id: str | None = None):
        self._acc = acc
        self.key = key
        self.plan = plan
        self.reservation = reservation
        self.request_id = request_id                  # the gateway's own: the usage record's identity
        self.client_request_id = client_request_id    # the client's X-Request-ID, if it sent one
        self.admitted = False          # holds an admission slot (admit())
        self.engine: Engine | None = None   # chosen by pick_engine()
        self.reached = False           # the engine answered (response headers received: engine_reached())
        self.answered = False          # its breaker has the verdict already (engine_answered())
        self._closed = False

    async def admit(self) -> None:
        """Take an admission slot (waits briefly at capacity; ServiceUnavailable if none frees)."""
        await self._acc.admission.enter()
        self.admitted = True

    def pick_engine(self) -> Engine:
        """Choose the engine this request goes to (ServiceUnavailable if none can take it)."""
        self.engine = self._acc.engines.pick(self.plan.served.engines)
        return self.engine

    def engine_reached(self) -> None:
        """The engine's response headers are in: it received the request."""
        self.reached = True

    def engine_answered(self) -> None:
        """The engine answered (status below 500 and first bytes): tell its breaker now, so a
        half-open trial does not last as long as the whole answer."""
        if not self.answered and self.engine is not None:
            self.answered = True
            self._acc.engines.answered(self.engine)

    async def close(self, status: int, *, usage: dict[str, Any] | None = None, failure: FailureKind | None = None,
                    chunks: int = 0) -> None:
        """Give everything back. `failure` is the upstream error kind, if the engine failed."""
        if self._closed:
            return
        self._closed = True
        acc = self._acc
        try:
            if self.engine is not None:
                if failure is not None or self.reached:
                    acc.engines.done(self.engine, failure, answered=self.answered)
                else:
                    acc.engines.release_unused(self.engine)
            if self.admitted:
                acc.admission.leave()

            # An engine is chosen only to send the request at once; CONNECT means it never got it.
            received = self.engine is not None and failure != FailureKind.CONNECT
            actual: int | None
            if usage is not None:
                prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
                actual = prompt + completion
                acc.count_tokens(self.key.tier, self.plan.served.id, prompt, completion)
            elif not received or (failure is None and status != 499 and 400 <= status < 500):
                prompt = completion = actual = 0
            else:
                prompt, completion, actual = self.plan.prompt_tokens, chunks, None
            if received:
                acc.usage.record(request_id=self.request_id, key_id=self.key.id, tier=self.key.tier,
                                 model=self.plan.served.id, prompt_tokens=prompt, completion_tokens=completion,
                                 status=status, client_request_id=self.client_request_id)
            await acc.limiter.finish(self.reservation, actual)
        except Exception:  # closing the books must never fail the request
            log.exception("closing the books failed", extra={"request_id": self.request_id})
        finally:
            acc._closed()

    async def close_shielded(self, status: int, **kw: Any) -> None:
        """close(), protected from the cancellation of a stream whose client went away."""
        with anyio.CancelScope(shield=True):
            await self.close(status, **kw)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
