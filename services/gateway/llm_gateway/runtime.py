"""Every long-lived part of one gateway worker process, wired together in one place.

`Runtime.start()` builds them at start-up (the app's lifespan), `close()` takes them down in
the order that loses nothing: wait for open requests to close their books, stop the
background loops, flush usage to PostgreSQL, then close the connections.

Background loops (off the request path):
- every `health_check_interval_seconds`: engine health, PostgreSQL and Redis reachability
  (the gateway_dependency_up gauges); the model catalog every `model_refresh_seconds` and as
  soon as an engine comes back;
- every lease_seconds / 3: renew the concurrency leases of this process's requests in Redis;
- every 0.1 s: watch the clients of non-streaming requests that have waited that long for a
  hang-up (hangup.HangUpWatch);
- every 0.2 s: probe the engines that are down, so a restarted one is back at once
  (EnginePool.watch_recovery).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from . import db, metrics
from .accounting import Accounting
from .admission import Admission
from .catalog import ModelCatalog
from .engines import EnginePool
from .hangup import HangUpWatch
from .keys import KeyStore
from .limiter import RateLimiter
from .priority import TierPriorities
from .redis_client import create_probe_redis, create_redis
from .settings import Settings
from .tokens import TokenCounter
from .usage import UsageRecorder
from .validation import Validator

log = logging.getLogger(__name__)

_STARTUP_DB_WAIT_SECONDS = 60.0
_DRAIN_AFTER_SERVER_SECONDS = 5.0   # uvicorn already drained for shutdown_grace_seconds


_READINESS_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class Readiness:
    ready: bool
    postgres: bool
    redis: bool
    engines: dict[str, bool]     # engine URL -> healthy (internal: never shown through the edge)


@dataclass(eq=False)
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    http: aiohttp.ClientSession
    keys: KeyStore
    limiter: RateLimiter
    usage: UsageRecorder
    engines: EnginePool
    catalog: ModelCatalog
    validator: Validator
    priorities: TierPriorities
    admission: Admission
    accounting: Accounting
    upstream_timeout: aiohttp.ClientTimeout
    probe_redis: aioredis.Redis | None = None
    hangups: HangUpWatch = field(default_factory=HangUpWatch)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _readiness: tuple[float, asyncio.Future[Readiness]] | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        pool = await _connect_postgres(settings.database_url.get_secret_value())
        redis = create_redis(settings.redis_url.get_secret_value())
        probe_redis = create_probe_redis(settings.redis_url.get_secret_value())
        # One pooled client for every engine call: keep-alive connections, enough of them for
        # every admitted request (streams hold theirs for the whole answer) plus health checks.
        # Idle connections are dropped after 4 s, before vLLM's server drops them (uvicorn: 5 s),
        # so a request is never written into a connection the engine is closing. No
        # Accept-Encoding: answers are relayed byte for byte, never compressed.
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=settings.max_in_flight + 16,
                                           keepalive_timeout=4, ttl_dns_cache=settings.engine_dns_ttl_seconds),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))
        engines = EnginePool(settings.engines, http, failure_threshold=settings.circuit_failure_threshold,
                             open_seconds=settings.circuit_open_seconds,
                             health_interval=settings.health_check_interval_seconds,
                             embedding_urls=settings.embedding_engines)
        catalog = ModelCatalog(engines, http)
        limiter = build_limiter(settings, redis, probe_redis)
        usage = UsageRecorder(pool)
        admission = Admission(settings.max_in_flight, settings.admission_wait_seconds)
        rt = cls(settings=settings, pool=pool, redis=redis, http=http,
                 keys=KeyStore(pool, settings.key_cache_ttl_seconds,
                               stale_if_error_seconds=settings.key_cache_stale_if_error_seconds,
                               acquire_timeout_seconds=settings.key_lookup_timeout_seconds,
                               auth_failures_per_minute=settings.auth_failures_per_minute),
                 limiter=limiter, usage=usage, engines=engines, catalog=catalog,
                 validator=Validator(catalog, TokenCounter(engines, http), settings.max_n),
                 priorities=TierPriorities(settings.tier_priorities), admission=admission,
                 accounting=Accounting(limiter, admission, engines, usage),
                 upstream_timeout=_upstream_timeout(settings.request_timeout_seconds),
                 probe_redis=probe_redis)
        await usage.start()
        await limiter.warm_up()
        # Know the engines and their models before the first request.
        await engines.check_health()
        await catalog.refresh()
        # The dependency gauges from the start (readiness details live there, and a gauge left at
        # its initial 0 until the first watch would read "down").
        await limiter.ping()
        await rt.check_postgres()
        rt._tasks = [asyncio.create_task(rt._watch(), name="watch-dependencies"),
                     asyncio.create_task(rt._renew_leases(), name="renew-leases"),
                     asyncio.create_task(rt.hangups.run(), name="watch-hang-ups"),
                     asyncio.create_task(engines.watch_recovery(catalog.refresh_soon), name="engine-recovery")]
        return rt

    async def close(self) -> None:
        if not await self.accounting.wait_idle(_DRAIN_AFTER_SERVER_SECONDS):
            log.warning("shutting down with %d requests still open", self.accounting.open_count)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.usage.close()
        await self.http.close()
        await self.redis.aclose()
        if self.probe_redis is not None:
            await self.probe_redis.aclose()
        await self.pool.close()

    async def _watch(self) -> None:
        interval = self.settings.health_check_interval_seconds
        next_models = time.monotonic() + self.settings.model_refresh_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                recovered = await self.engines.check_health()
                if recovered or time.monotonic() >= next_models:
                    await self.catalog.refresh()
                    next_models = time.monotonic() + self.settings.model_refresh_seconds
                await self.check_postgres()
                await self.limiter.ping()   # keeps gateway_dependency_up{redis} current
            except Exception:  # the watcher must outlive any single failure
                log.exception("dependency watch failed")

    async def check_postgres(self, timeout: float = 2.0) -> bool:
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), timeout)
            up = True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            up = False
        metrics.DEPENDENCY_UP.labels("postgres").set(1 if up else 0)
        return up

    async def readiness(self) -> Readiness:
        """Whether this worker can serve, checked at most once a second: concurrent and repeated
        /readyz calls share one check, so probing cannot load PostgreSQL or Redis."""
        now = time.monotonic()
        cached = self._readiness
        if cached is None or now - cached[0] >= _READINESS_CACHE_SECONDS:
            cached = self._readiness = (now, asyncio.ensure_future(self._check_readiness()))
        return await asyncio.shield(cached[1])

    async def _check_readiness(self) -> Readiness:
        postgres, redis = await asyncio.gather(self.check_postgres(), self.limiter.ping())
        engines = {e.url: e.healthy for e in self.engines.engines}
        redis_required = self.settings.limiter_failure_mode == "closed"
        ready = postgres and (redis or not redis_required) and any(engines.values())
        return Readiness(ready, postgres, redis, engines)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.limiter.lease_seconds / 3)
            await self.limiter.renew_leases()


def _upstream_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """How long an engine may keep a request waiting: for the first byte of its answer, then
    between two reads of a stream. Not a total: time the relay spends blocked on a slow client
    must never count against the engine (aiohttp stops the sock_read timer while reading is
    paused because the consumer's buffer is full: client_proto.py, pause_reading/_drop_timeout)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=seconds)


# A request holds its concurrency lease from admission until its books close. The bound is
# for leaks (books never closed); since request_timeout_seconds bounds each wait on the engine
# rather than a whole stream (_upstream_timeout), a stream that runs longer than this stops
# holding its slot (docs/gateway.md, "Concurrency leases").
_LEASE_HOLD_MARGIN_SECONDS = 30.0


def build_limiter(settings: Settings, redis: aioredis.Redis, probe: aioredis.Redis | None = None) -> RateLimiter:
    return RateLimiter(redis, settings.limiter_failure_mode, probe=probe,
                       max_hold_seconds=settings.request_timeout_seconds + settings.admission_wait_seconds
                       + _LEASE_HOLD_MARGIN_SECONDS)


async def _connect_postgres(dsn: str) -> asyncpg.Pool:
    """The pool, waiting a while for a PostgreSQL that starts after the gateway."""
    deadline = time.monotonic() + _STARTUP_DB_WAIT_SECONDS
    delay = 0.5
    while True:
        try:
            return await db.create_pool(dsn)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("PostgreSQL not reachable yet (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
