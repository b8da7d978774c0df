"""The engine pool: which vLLM server takes the next request.

- Choice: least outstanding requests among the engines that serve the model, passed their
  last health check and whose circuit breaker lets a request through.
- Health: GET /health on every engine every `health_check_interval_seconds`, off the
  request path (a background task of each worker process). A refused connection marks an
  engine down at once; a slow or failed answer only after SLOW_PROBES_TO_DOWN in a row, since
  a busy engine (a CPU one above all) can miss one probe's deadline while serving fine.
- Recovery: an engine that is down is probed every RECOVERY_PROBE_SECONDS instead (a refused
  connection costs nothing), so a restarted engine takes traffic again within that, not within
  a whole health interval. Passing a probe after being down also closes its breaker: the
  breaker was opened by the requests that failed while the engine was away, and the probe is
  the evidence a half-open trial would give (without it, a restart cost up to
  circuit_open_seconds more of 503s, then one trial request while everyone else got 503).
- Circuit breaker per engine (breaker.py): request outcomes open it; a dead engine then
  costs a client a fast 503 with Retry-After instead of a connect timeout. A request's verdict
  is given when the engine has answered (`answered()`: status and first byte); what happens
  after that only counts if it is the engine's failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import Counter

from . import metrics
from .breaker import CircuitBreaker
from .errors import ServiceUnavailable
from .failures import TRANSPORT_ERRORS, FailureKind, classify

log = logging.getLogger(__name__)

# What an engine serves (GATEWAY_EMBEDDING_ENGINES lists the "embed" ones): "generate" answers
# /v1/chat/completions and /v1/completions, "embed" (vLLM's pooling runner) /v1/embeddings.
GENERATE, EMBED = "generate", "embed"

SLOW_PROBES_TO_DOWN = 2
RECOVERY_PROBE_SECONDS = 0.2
_JSON_HEADERS = {"content-type": "application/json"}


async def post(session: aiohttp.ClientSession, url: str, data: bytes, timeout: aiohttp.ClientTimeout,
               headers: dict[str, str] = _JSON_HEADERS) -> aiohttp.ClientResponse:
    """POST to an engine; returns once the response headers are in (the caller releases it).

    A connection lost before any answer is sent once more, on another connection: the
    keep-alive race (the engine closed an idle pooled connection just as the request went out
    on it: ServerDisconnectedError), a pooled connection that died with its engine (reset:
    ClientOSError / ClientConnectionResetError), or an engine that died working on it -- the
    gateway cannot tell these apart before a response byte. If the engine is gone, the resend
    is refused (ClientConnectorError: the caller's fast 503, nothing billed); any other failure
    is the caller's to label."""
    try:
        return await session.post(url, data=data, headers=headers, timeout=timeout)
    except _LOST as error:
        if isinstance(error, aiohttp.ClientConnectorError):
            raise                   # refused or unreachable: no connection was ever made
        # One loop turn first: the pool's other connections to a dead engine get their own
        # end-of-stream handled (and are dropped) before the resend chooses one.
        await asyncio.sleep(0)
        return await session.post(url, data=data, headers=headers, timeout=timeout)


# A connection that was made and then lost before any answer (ClientConnectorError, a refused
# connection, is a ClientOSError too: post() lets it through).
_LOST = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionResetError)


@dataclass(eq=False)
class Engine:
    url: str
    breaker: CircuitBreaker
    kind: str = GENERATE
    healthy: bool = False
    outstanding: int = 0
    failed_probes: int = 0   # consecutive health probes that timed out or answered non-200
    _errors: dict[FailureKind, Counter] = field(default_factory=dict)  # kind -> metric child, created on first use

    def count_error(self, kind: FailureKind) -> None:
        child = self._errors.get(kind)
        if child is None:
            child = self._errors[kind] = metrics.UPSTREAM_ERRORS.labels(self.url, kind)
        child.inc()


class EnginePool:
    def __init__(self, urls: Iterable[str], session: aiohttp.ClientSession, *, failure_threshold: int,
                 open_seconds: float, health_interval: float, health_timeout: float = 2.0,
                 embedding_urls: Iterable[str] = ()):
        self._session = session
        self.health_interval = health_interval
        self._health_timeout = aiohttp.ClientTimeout(total=health_timeout)
        self.engines: list[Engine] = []
        embedding = list(embedding_urls)
        # An embedding engine is in the pool whether or not `urls` lists it too.
        for url in dict.fromkeys([*urls, *embedding]):  # de-duplicated, order kept
            gauge = metrics.CIRCUIT_STATE.labels(url)
            breaker = CircuitBreaker(failure_threshold, open_seconds, on_change=gauge.set)
            gauge.set(breaker.state)
            self.engines.append(Engine(url, breaker, EMBED if url in embedding else GENERATE))
            metrics.ENGINE_HEALTHY.labels(url).set(0)

    # -- choosing ---------------------------------------------------------------------------

    def pick(self, serving: frozenset[str] | None = None) -> Engine:
        """The least busy usable engine among those serving the model (all engines if None).

        The caller must hand the engine back with `done()` exactly once."""
        best: Engine | None = None
        for engine in self.engines:
            if ((serving is None or engine.url in serving) and engine.healthy and engine.breaker.available()
                    and (best is None or engine.outstanding < best.outstanding)):
                best = engine
        if best is None:
            metrics.ADMISSION_REJECTIONS.labels("no_healthy_engine").inc()
            raise ServiceUnavailable("No inference engine is available for this model right now; retry shortly.",
                                     reason="no_healthy_engine", retry_after=self._retry_after(serving))
        best.breaker.claim()
        best.outstanding += 1
        return best

    def answered(self, engine: Engine) -> None:
        """The engine answered a request (a status below 500 and its first bytes): a success for
        its breaker, which ends a half-open trial now rather than when the answer ends."""
        engine.breaker.record_success()

    def done(self, engine: Engine, failure: FailureKind | None = None, *, answered: bool = False) -> None:
        """Hand an engine back; `failure` is what went wrong, if anything (failures.py), which counts
        against its breaker. Without a failure it is a success, unless `answered()` already
        recorded it (answered=True)."""
        engine.outstanding -= 1
        if failure is None:
            if not answered:
                engine.breaker.record_success()
        else:
            engine.count_error(failure)
            engine.breaker.record_failure()
            if failure == FailureKind.CONNECT:
                # Refused or unreachable: stop choosing it now rather than at the next health check.
                self._set_health(engine, False)

    def release_unused(self, engine: Engine) -> None:
        """Hand back an engine the request never reached (no outcome to learn from)."""
        engine.outstanding -= 1
        engine.breaker.unclaim()

    def _retry_after(self, serving: frozenset[str] | None) -> float:
        waits = [e.breaker.retry_after() for e in self.engines
                 if (serving is None or e.url in serving) and e.healthy and e.breaker.retry_after() > 0]
        return min(waits) if waits else 1.0   # a down engine is probed every RECOVERY_PROBE_SECONDS

    # -- health -----------------------------------------------------------------------------

    def healthy(self) -> list[Engine]:
        return [e for e in self.engines if e.healthy]

    async def check_health(self, engines: list[Engine] | None = None) -> list[Engine]:
        """Probe every engine (or those given) once; returns the engines that just came back."""
        engines = self.engines if engines is None else engines
        results = await asyncio.gather(*(self._probe(e) for e in engines))
        recovered = []
        for engine, result in zip(engines, results, strict=True):
            if result == "ok":
                engine.failed_probes = 0
                if not engine.healthy:
                    recovered.append(engine)
                    engine.breaker.reset()
                self._set_health(engine, True)
            elif result == "refused":
                engine.failed_probes = SLOW_PROBES_TO_DOWN
                self._set_health(engine, False)
            else:
                engine.failed_probes += 1
                if engine.failed_probes >= SLOW_PROBES_TO_DOWN:
                    self._set_health(engine, False)
        metrics.DEPENDENCY_UP.labels("engine").set(1 if any(e.healthy for e in self.engines) else 0)
        return recovered

    async def watch_recovery(self, on_recovered: Callable[[], object]) -> None:
        """Probe the engines that are down every RECOVERY_PROBE_SECONDS (a background task);
        `on_recovered()` when one comes back (the catalog re-reads its models)."""
        while True:
            await asyncio.sleep(RECOVERY_PROBE_SECONDS)
            down = [e for e in self.engines if not e.healthy]
            try:
                if down and await self.check_health(down):
                    on_recovered()
            except Exception:  # the watcher must outlive any single failure
                log.exception("engine recovery probe failed")

    async def _probe(self, engine: Engine) -> str:
        """"ok", "refused" (nothing listens: down for sure) or "failed" (slow or not 200)."""
        try:
            async with self._session.get(engine.url + "/health", timeout=self._health_timeout) as response:
                await response.read()
                return "ok" if response.status == 200 else "failed"
        except TRANSPORT_ERRORS as error:
            return "refused" if classify(error) is FailureKind.CONNECT else "failed"

    def _set_health(self, engine: Engine, healthy: bool) -> None:
        if healthy != engine.healthy:
            log.log(logging.INFO if healthy else logging.WARNING, "engine %s", "healthy" if healthy else "unhealthy",
                    extra={"upstream": engine.url})
        engine.healthy = healthy
        metrics.ENGINE_HEALTHY.labels(engine.url).set(1 if healthy else 0)
