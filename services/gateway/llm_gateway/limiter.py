"""Per-key rate limits and the concurrent-request cap, shared by every replica through Redis.

One request = one Redis round trip to admit it (limiter_v1.lua: requests, tokens and the
concurrency lease checked and updated atomically with Redis server time) and one to finish
it (limiter_v1_settle.lua: unused tokens back, lease freed; `finish()` does both at once).

Tokens are reserved up front (prompt estimate + max_tokens) and the difference from the
real usage is given back afterwards, so the tokens bucket follows what was really served.

Keys over their requests-per-minute limit are remembered locally until the bucket holds a
request again (as Envoy's ratelimit does), so a client hammering past its limit costs no
Redis round trip. Only the requests bucket is remembered: nothing but time refills it, so
the local answer is exactly Redis's. Tokens (refilled by reconciliation elsewhere) and
concurrency (freed by other replicas) are always asked.

Redis unreachable: failure_mode "closed" answers 503, "local" falls back to a per-process
limiter (local_limiter.py). Either way Redis is then retried after a short, growing back-off
(capped at 0.4 s) by a single probing request, so recovery is automatic and prompt and there
is no reconnect storm; connections opened before the failure are reconnected before reuse.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .errors import RateLimited, ServiceUnavailable
from .keys import ApiKey
from .local_limiter import ALLOWED, OVER_CONCURRENCY, OVER_RPM, OVER_TPM, LocalLimiter

try:
    # redis-py >= 7 asks every new connection to enable "maintenance notifications" (a managed
    # Redis feature): one more round trip per connection, which open-source Redis refuses anyway.
    from redis.maint_notifications import MaintNotificationsConfig
    _CONNECTION_OPTIONS: dict = {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}
except ImportError:  # older redis-py: nothing to turn off
    _CONNECTION_OPTIONS = {}

log = logging.getLogger(__name__)

KEY_PREFIX = "rl:v1:"     # carried by every Redis key limiter_v1*.lua touches
_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
_REASONS = {OVER_RPM: "rpm", OVER_TPM: "tpm", OVER_CONCURRENCY: "concurrency"}
_RENEW_BATCH = 500


# The limiter keeps at most this many Redis calls in flight per process; the pool created by
# create_redis() has room for them plus readiness probes, so a burst of requests queues here
# (cheaply) instead of opening a storm of new connections or failing for want of one.
MAX_CONCURRENT_CALLS = 48


# Per-call deadline. Redis answers in well under a millisecond, but on a small, saturated host
# (a CPU engine generating beside 256 open streams) the event loop itself can stall for most of a
# second; a 1 s deadline turned such stalls into false "Redis unreachable" verdicts and 503s.
# A Redis that is really down refuses connections at once, whatever this says.
REDIS_CALL_TIMEOUT_SECONDS = 3.0
# A timeout while Redis has been answering may be the caller's own stall: only this many in a
# row mark Redis down (a refused or reset connection does at once).
TIMEOUTS_TO_DOWN = 2


def create_redis(url: str, *, socket_timeout: float = REDIS_CALL_TIMEOUT_SECONDS,
                 max_connections: int = 64) -> aioredis.Redis:
    """The Redis client the limiter expects: small timeouts and no client-side retries.

    redis-py retries a failed command up to 10 times with back-off by default; with Redis
    down that would hold every request for seconds, so retries are off (the limiter has its
    own back-off). max_connections must exceed the limiter's MAX_CONCURRENT_CALLS. (A plain
    pool plus the limiter's semaphore costs about a quarter less CPU per call than redis-py's
    BlockingConnectionPool.)
    """
    return aioredis.Redis.from_url(
        url, max_connections=max(max_connections, MAX_CONCURRENT_CALLS + 8),
        socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0), retry_on_timeout=False, **_CONNECTION_OPTIONS)


def create_probe_redis(url: str, *, timeout: float = 2.0) -> aioredis.Redis:
    """A small client of its own for health probes (RateLimiter(probe=...)): probes wait for
    one of its few connections instead of competing with the limiter's calls for theirs."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=4, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), retry_on_timeout=False, **_CONNECTION_OPTIONS)
    return aioredis.Redis(connection_pool=pool)


def _script(name: str) -> str:
    return resources.files("llm_gateway").joinpath(name).read_text(encoding="utf-8")


class _ScriptRunner:
    """Runs the limiter's Lua scripts over connections it keeps checked out of the client's pool.

    redis-py's per-command path (pool lock and connection check, health and re-auth hooks,
    retry wrapper, connection metrics, a task per write to time it out) cost more CPU than the
    round trip itself, and the limiter needs none of it: it caps its own calls (the caller holds
    RateLimiter._calls, so at most MAX_CONCURRENT_CALLS connections are used), has its own
    back-off, and redis-py drops a connection on any failure (the next call reconnects).
    The connections stay in the pool's books, so closing the client closes them too.
    """

    def __init__(self, redis: aioredis.Redis):
        self._pool = redis.connection_pool
        # One deadline over the whole call (asyncio.timeout: no task) instead of redis-py's own.
        self._timeout = self._pool.connection_kwargs.get("socket_timeout")
        self._idle: list = []            # (connection, generation it was last used in)
        self._generation = 0

    def distrust_idle(self) -> None:
        """Redis failed: every idle connection may be dead (a restarted Redis drops them all,
        and nothing reads a dead idle socket until it is used). Each is reconnected before its
        next use, instead of failing one request each -- up to MAX_CONCURRENT_CALLS failures in
        a row after Redis is back, every one of which marked Redis down again."""
        self._generation += 1

    async def warm(self, count: int) -> int:
        """Open `count` connections now, so a burst of traffic does not open them all at once
        (a connect storm on a saturated host stalled some connects for seconds). Best effort."""
        opened = 0
        for _ in range(count):
            conn = self._pool.get_available_connection()
            conn.socket_timeout = None
            try:
                await conn.connect()
            except _REDIS_FAILURES:
                await conn.disconnect()
                self._idle.append((conn, self._generation))
                break
            self._idle.append((conn, self._generation))
            opened += 1
        return opened

    async def run(self, script, keys, args):
        generation = self._generation
        if self._idle:
            conn, used_in = self._idle.pop()
            reader = conn._reader
            # Closed by the server while idle (a restarted Redis; this process may not have seen
            # it go), or opened before Redis last failed (see distrust_idle): reconnect first.
            # Nothing was sent on it, so nothing can run twice. The send below reconnects.
            if used_in != generation or (reader is not None and reader.at_eof()):
                await conn.disconnect(nowait=True)
        else:
            conn = self._pool.get_available_connection()   # never connects; the first send does
            conn.socket_timeout = None                      # timed out below, around send and read
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args, check_health=False)
                    return await conn.read_response()
                except NoScriptError:   # a restarted or flushed Redis: EVAL sends (and caches) the script
                    await conn.send_command("EVAL", script.script, len(keys), *keys, *args, check_health=False)
                    return await conn.read_response()
        finally:
            # Reusable whatever happened: an error reply leaves it in step, anything else has
            # already disconnected it (redis-py does so on every failed send or read).
            self._idle.append((conn, generation))


def format_duration(ms: float) -> str:
    """OpenAI's (Go's) duration format for x-ratelimit-reset-*: "20ms", "1.5s", "6m0s", "1h2m3s"."""
    ms = math.ceil(ms)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


@dataclass(slots=True)
class Reservation:
    key_id: str
    request_id: str
    tokens_reserved: int
    mode: str                    # "redis" | "local" | "unlimited"
    headers: dict[str, str]      # x-ratelimit-* for the response
    lease_id: str = ""           # concurrency lease ('' = key has no concurrency cap)
    tpm: int = 0                 # the key's tokens limit (0 = none), for reconciliation
    started: float = 0.0         # time.monotonic() when admitted
    released: bool = field(default=False, repr=False)


@dataclass(slots=True)
class _OverRpm:
    """A remembered requests-per-minute rejection (see the module docstring)."""
    until: float                 # time.monotonic() when the bucket holds a request again
    sent: float                  # time.monotonic() when the rejecting call was sent
    result: tuple                # limiter_v1.lua's answer


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, failure_mode: Literal["closed", "local"],
                 concurrency_lease_seconds: float = 60.0, *, max_hold_seconds: float = 3600.0,
                 backoff_initial_seconds: float = 0.1, backoff_max_seconds: float = 0.4,
                 probe: aioredis.Redis | None = None):
        """max_hold_seconds: leases are not renewed past this age (set it a little above the
        request timeout), so a reservation that is never released cannot hold a slot forever.

        The back-off only spaces the probes of a Redis that is down. Probes are already one at
        a time (a single request; the rest fall back at once), so a short cap costs one refused
        connect per process per interval and cannot storm; a long one (it was 5 s) only made
        clients wait up to that long after Redis was back.

        probe: the client ping() uses (readiness, the dependency watcher), so probes never
        take connections from the limiter's pool; defaults to `redis`."""
        if failure_mode not in ("closed", "local"):
            raise ValueError(f"failure_mode must be 'closed' or 'local', not {failure_mode!r}")
        self._redis = redis
        self._probe = probe or redis
        self._failure_mode = failure_mode
        self._lease_ms = max(1, int(concurrency_lease_seconds * 1000))
        self._max_hold = max_hold_seconds
        self._scripts = _ScriptRunner(redis)
        self._reserve = redis.register_script(_script("limiter_v1.lua"))
        self._settle = redis.register_script(_script("limiter_v1_settle.lua"))
        self._renew = redis.register_script(_script("limiter_v1_renew.lua"))
        self._local = LocalLimiter()
        self._over_rpm: dict[str, _OverRpm] = {}
        self._in_flight: dict[str, Reservation] = {}     # lease id -> reservation held in Redis
        self._lease_ids = itertools.count()
        self._lease_prefix = secrets.token_hex(6)         # unique per process: ids never collide
        # Redis health: while time.monotonic() < _down_until, Redis is not asked.
        self._redis_up: bool | None = None
        self._down_until = 0.0
        self._timeouts_in_row = 0
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._backoff = backoff_initial_seconds
        self._probing = False
        self._background: set[asyncio.Task] = set()
        self._calls = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        self._allowed = metrics.LIMITER_DECISIONS.labels("allowed", "ok")
        self._allowed_local = metrics.LIMITER_DECISIONS.labels("allowed", "local_fallback")
        self._rejected = {verdict: metrics.LIMITER_DECISIONS.labels("rejected", reason)
                          for verdict, reason in _REASONS.items()}
        self._rejected_unavailable = metrics.LIMITER_DECISIONS.labels("rejected", "redis_unavailable")
        self._redis_gauge = metrics.DEPENDENCY_UP.labels("redis")

    async def warm_up(self) -> int:
        """Open the connections a burst will use (MAX_CONCURRENT_CALLS) before traffic arrives."""
        return await self._scripts.warm(MAX_CONCURRENT_CALLS)

    @property
    def max_hold_seconds(self) -> float:
        return self._max_hold

    @property
    def lease_seconds(self) -> float:
        """Leases must be renewed well within this; call renew_leases() every lease_seconds / 3."""
        return self._lease_ms / 1000

    # -- admitting a request ------------------------------------------------------------------

    async def reserve(self, key: ApiKey, request_id: str, tokens: int) -> Reservation:
        rpm, tpm, max_concurrent = key.rpm or 0, key.tpm or 0, key.max_concurrent or 0
        tokens = max(0, int(tokens))
        if not (rpm or tpm or max_concurrent):
            self._allowed.inc()
            return Reservation(key.id, request_id, tokens, "unlimited", {})
        if tpm and tokens > tpm:
            # Can never fit, whatever the bucket holds: no need to ask Redis.
            self._rejected[OVER_TPM].inc()
            raise RateLimited(
                f"Request too large: {tokens} tokens requested (prompt + max_tokens), but this key is limited to "
                f"{tpm} tokens per minute. Reduce the prompt or max_tokens.",
                reason="tpm", headers={"x-ratelimit-limit-tokens": str(tpm)})

        now = time.monotonic()
        remembered = self._over_rpm.get(key.id)
        if remembered is not None:
            if now < remembered.until:
                self._reject(key, self._age(remembered, now, rpm, tpm))
            del self._over_rpm[key.id]

        lease_id = f"{self._lease_prefix}:{next(self._lease_ids)}" if max_concurrent else ""
        if now < self._down_until or self._probing:
            return self._fallback(key, request_id, tokens, lease_id)
        probe = self._redis_up is False
        if probe:
            self._probing = True      # one request tests a recovering Redis; the others fall back
        # Shielded: a client that goes away mid-call must not tear the call down halfway (Redis may
        # already be granting the reservation, and a half-used connection would be dropped);
        # the call completes and whatever it granted is handed back (_abandoned).
        call = asyncio.ensure_future(self._call(
            self._reserve, keys=(f"{KEY_PREFIX}{{{key.id}}}:b", f"{KEY_PREFIX}{{{key.id}}}:c"),
            args=(rpm, tpm, max_concurrent, tokens, lease_id, self._lease_ms)))
        try:
            result = tuple(await asyncio.shield(call))
        except _REDIS_FAILURES as exc:
            self._redis_failed(exc)
            return self._fallback(key, request_id, tokens, lease_id)
        except Exception as exc:  # a client bug is still "no answer from Redis", never a 500
            log.exception("rate limiter: unexpected error from the Redis client")
            self._redis_failed(exc)
            return self._fallback(key, request_id, tokens, lease_id)
        except asyncio.CancelledError:
            self._background.add(call)                  # held until it completes
            call.add_done_callback(self._background.discard)
            call.add_done_callback(lambda done: self._abandoned(done, key.id, tpm, tokens, lease_id))
            raise
        finally:
            if probe:
                self._probing = False
        if self._redis_up is not True:
            self._redis_recovered()
        self._timeouts_in_row = 0

        if result[0] != ALLOWED:
            if result[0] == OVER_RPM:
                self._remember_over_rpm(key.id, now, result)
            self._reject(key, result)
        self._allowed.inc()
        reservation = Reservation(key.id, request_id, tokens, "redis", self._headers(key, result, rejected=False),
                                  lease_id, tpm, now)
        if lease_id:
            self._in_flight[lease_id] = reservation
        return reservation

    async def _call(self, script, keys, args):
        async with self._calls:
            return await self._scripts.run(script, keys, args)

    def _abandoned(self, call: asyncio.Future, key_id: str, tpm: int, tokens: int, lease_id: str) -> None:
        """The caller of a reserve() went away; if Redis admitted it, give everything back."""
        if call.cancelled() or call.exception() is not None or call.result()[0] != ALLOWED:
            return
        if lease_id or tpm:
            self._in_background(self._call(
                self._settle, keys=(f"{KEY_PREFIX}{{{key_id}}}:b", f"{KEY_PREFIX}{{{key_id}}}:c"),
                args=(tpm if tokens else 0, tokens, lease_id)))

    def _in_background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)                       # held, so it is not collected mid-flight
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("rate limiter: background task failed: %r", task.exception())

    def _fallback(self, key: ApiKey, request_id: str, tokens: int, lease_id: str) -> Reservation:
        if self._failure_mode == "closed":
            self._rejected_unavailable.inc()
            raise ServiceUnavailable("Rate limiting is temporarily unavailable; retry shortly.",
                                     reason="redis_unavailable",
                                     retry_after=max(1.0, self._down_until - time.monotonic()))
        result = self._local.reserve(key.id, key.rpm or 0, key.tpm or 0, key.max_concurrent or 0, tokens, lease_id)
        if result[0] != ALLOWED:
            self._reject(key, result)
        self._allowed_local.inc()
        return Reservation(key.id, request_id, tokens, "local", self._headers(key, result, rejected=False),
                           lease_id, key.tpm or 0)

    def _reject(self, key: ApiKey, result: tuple):
        verdict = result[0]
        self._rejected[verdict].inc()
        if verdict == OVER_RPM:
            message = f"Rate limit reached for requests: limit {key.rpm} per minute."
        elif verdict == OVER_TPM:
            message = f"Rate limit reached for tokens: limit {key.tpm} per minute."
        else:
            message = f"Too many concurrent requests: limit {key.max_concurrent} at a time."
        retry = format_duration(result[5])
        raise RateLimited(f"{message} Please try again in {retry}.", reason=_REASONS[verdict],
                          headers=self._headers(key, result, rejected=True))

    @staticmethod
    def _headers(key: ApiKey, result: tuple, *, rejected: bool) -> dict[str, str]:
        headers: dict[str, str] = {}
        if rejected:
            retry_ms = max(0, result[5])
            headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
            headers["retry-after-ms"] = str(retry_ms)   # read by the official openai clients
        if key.rpm:
            headers["x-ratelimit-limit-requests"] = str(key.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, result[1]))
            headers["x-ratelimit-reset-requests"] = format_duration(result[2])
        if key.tpm:
            headers["x-ratelimit-limit-tokens"] = str(key.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, result[3]))
            headers["x-ratelimit-reset-tokens"] = format_duration(result[4])
        return headers

    def _remember_over_rpm(self, key_id: str, sent: float, result: tuple) -> None:
        # `sent` precedes the moment Redis decided, so `until` never outlasts the real refill:
        # a remembered rejection is one Redis would have given too.
        if len(self._over_rpm) >= 10_000:
            now = time.monotonic()
            for stale in [k for k, v in self._over_rpm.items() if v.until <= now]:
                del self._over_rpm[stale]
        self._over_rpm[key_id] = _OverRpm(until=sent + result[5] / 1000, sent=sent, result=result)

    @staticmethod
    def _age(remembered: _OverRpm, now: float, rpm: int, tpm: int) -> tuple:
        """The remembered answer, with its times moved on to now."""
        elapsed = (now - remembered.sent) * 1000
        verdict, _, req_reset, tok_left, tok_reset, retry, held = remembered.result
        tok_left = min(tpm, math.floor(tok_left + elapsed * tpm / 60000)) if tpm else tok_left
        return (verdict, 0, max(0, req_reset - elapsed), tok_left, max(0, tok_reset - elapsed),
                max(0, math.ceil(retry - elapsed)), held)

    # -- finishing a request ------------------------------------------------------------------

    async def reconcile(self, reservation: Reservation, actual_tokens: int) -> None:
        """Give back reserved - actual tokens (or charge the excess). Never raises."""
        await self._finish(reservation, actual_tokens, release=False)

    async def release(self, reservation: Reservation) -> None:
        """Free the request's concurrency slot. Idempotent; never raises."""
        await self._finish(reservation, None, release=True)

    async def finish(self, reservation: Reservation, actual_tokens: int | None) -> None:
        """reconcile() and release() in one Redis round trip (actual_tokens None: no usage known)."""
        await self._finish(reservation, actual_tokens, release=True)

    async def _finish(self, res: Reservation, actual_tokens: int | None, *, release: bool) -> None:
        try:
            delta = 0
            if actual_tokens is not None and res.tpm:
                actual = max(0, int(actual_tokens))
                delta = res.tokens_reserved - actual
                res.tokens_reserved = actual          # a second reconcile gives nothing back twice
            lease_id = ""
            if release and res.lease_id and not res.released:
                res.released = True
                lease_id = res.lease_id
                self._in_flight.pop(lease_id, None)
            if not delta and not lease_id:
                return
            if res.mode == "local":
                self._local.give_back(res.key_id, res.tpm, delta)
                if lease_id:
                    self._local.release(res.key_id, lease_id)
            elif res.mode == "redis":
                await self._call(self._settle,
                                 keys=(f"{KEY_PREFIX}{{{res.key_id}}}:b", f"{KEY_PREFIX}{{{res.key_id}}}:c"),
                                 args=(res.tpm if delta else 0, delta, lease_id))
        except _REDIS_FAILURES as exc:
            # A lease not freed here lapses by itself; tokens not given back are a small overcharge.
            self._redis_failed(exc)
        except Exception:  # finishing a request must never fail it
            log.exception("rate limiter: finishing reservation %s failed", res.request_id)

    async def renew_leases(self) -> None:
        """Extend the leases of this process's in-flight requests. Never raises."""
        now = time.monotonic()
        overdue = [r for r in self._in_flight.values() if now - r.started > self._max_hold]
        for res in overdue:
            # Never released (a bug upstream of here): stop renewing, so the slot lapses by itself.
            del self._in_flight[res.lease_id]
            log.warning("rate limiter: lease of request %s held %.0f s without release; letting it lapse",
                        res.request_id, now - res.started)
        leases = list(self._in_flight.values())
        if not leases or now < self._down_until:
            return
        try:
            for start in range(0, len(leases), _RENEW_BATCH):
                batch = leases[start:start + _RENEW_BATCH]
                await self._call(self._renew, keys=[f"{KEY_PREFIX}{{{r.key_id}}}:c" for r in batch],
                                 args=[self._lease_ms, *(r.lease_id for r in batch)])
        except _REDIS_FAILURES as exc:
            self._redis_failed(exc)
        except Exception:
            log.exception("rate limiter: renewing leases failed")

    # -- Redis health -------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            await self._probe.ping()
        except Exception as exc:  # noqa: BLE001 - a probe answers, it never raises
            self._redis_failed(exc)
            return False
        if self._redis_up is not True:
            self._redis_recovered()
        return True

    def _redis_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if isinstance(exc, (TimeoutError, RedisTimeoutError)) and self._redis_up is True:
            self._timeouts_in_row += 1
            if self._timeouts_in_row < TIMEOUTS_TO_DOWN:
                log.warning("rate limiter: a Redis call timed out; Redis is still considered up")
                return
        if self._redis_up is not False:
            log.warning("rate limiter: Redis unreachable (%s: %s); failure mode %r",
                        type(exc).__name__, exc, self._failure_mode)
        elif now < self._down_until:
            return                      # already backing off: do not stretch the back-off further
        self._redis_up = False
        self._redis_gauge.set(0)
        self._scripts.distrust_idle()
        self._down_until = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _redis_recovered(self) -> None:
        if self._redis_up is False:
            log.warning("rate limiter: Redis reachable again")
        self._redis_up = True
        self._redis_gauge.set(1)
        self._down_until = 0.0
        self._backoff = self._backoff_initial
