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

Around it: limiter_scripts.py (the scripts' key names and reply), redis_client.py (the Redis
client and how scripts run over it), redis_health.py (up, or down and backing off),
ratelimit_headers.py (the x-ratelimit-* headers).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from . import metrics
from .errors import RateLimited, ServiceUnavailable
from .keys import ApiKey
from .limiter_scripts import ALLOWED, OVER_CONCURRENCY, OVER_RPM, OVER_TPM, Reply, limiter_keys, load_script
from .local_limiter import LocalLimiter
from .ratelimit_headers import format_duration, rate_limit_headers
from .redis_client import MAX_CONCURRENT_CALLS, REDIS_FAILURES, ScriptArg, ScriptRunner
from .redis_health import RedisHealth

log = logging.getLogger(__name__)

_REASONS = {OVER_RPM: "rpm", OVER_TPM: "tpm", OVER_CONCURRENCY: "concurrency"}
_RENEW_BATCH = 500


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

    def settle_tokens(self, actual_tokens: int | None) -> int:
        """Tokens to give back to the bucket once `actual_tokens` are known (reserved - actual;
        negative: the request used more, charge it). 0 without a token limit or a known usage.
        What is reserved becomes the actual usage, so a second call gives nothing back twice."""
        if actual_tokens is None or not self.tpm:
            return 0
        actual = max(0, int(actual_tokens))
        delta = self.tokens_reserved - actual
        self.tokens_reserved = actual
        return delta

    def take_lease(self) -> str:
        """The concurrency lease to free now, once: '' if there is none or it was freed already."""
        if not self.lease_id or self.released:
            return ""
        self.released = True
        return self.lease_id


@dataclass(slots=True)
class _OverRpm:
    """A remembered requests-per-minute rejection (see the module docstring)."""
    until: float                 # time.monotonic() when the bucket holds a request again
    sent: float                  # time.monotonic() when the rejecting call was sent
    reply: Reply                 # limiter_v1.lua's answer


def aged_reply(reply: Reply, elapsed_ms: float, tpm: int) -> Reply:
    """A remembered requests-per-minute rejection, with its times moved on by `elapsed_ms`
    (and the tokens bucket refilled at `tpm` a minute over that time)."""
    tokens_left = reply.tokens_left
    if tpm:
        tokens_left = min(tpm, math.floor(tokens_left + elapsed_ms * tpm / 60000))
    return reply._replace(requests_left=0,
                          requests_reset_ms=max(0, reply.requests_reset_ms - elapsed_ms),
                          tokens_left=tokens_left,
                          tokens_reset_ms=max(0, reply.tokens_reset_ms - elapsed_ms),
                          retry_after_ms=max(0, math.ceil(reply.retry_after_ms - elapsed_ms)))


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
        self._scripts = ScriptRunner(redis)
        self._reserve = self._scripts.register(load_script("limiter_v1.lua"))
        self._settle = self._scripts.register(load_script("limiter_v1_settle.lua"))
        self._renew = self._scripts.register(load_script("limiter_v1_renew.lua"))
        self._local = LocalLimiter()
        self._over_rpm: dict[str, _OverRpm] = {}
        self._in_flight: dict[str, Reservation] = {}     # lease id -> reservation held in Redis
        self._lease_ids = itertools.count()
        self._lease_prefix = secrets.token_hex(6)         # unique per process: ids never collide
        self._health = RedisHealth(backoff_initial_seconds, backoff_max_seconds, failure_mode=failure_mode,
                                   on_down=self._scripts.distrust_idle,
                                   on_change=metrics.DEPENDENCY_UP.labels("redis").set)
        self._background: set[asyncio.Task[Any]] = set()
        self._calls = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        self._allowed = metrics.LIMITER_DECISIONS.labels("allowed", "ok")
        self._allowed_local = metrics.LIMITER_DECISIONS.labels("allowed", "local_fallback")
        self._rejected = {verdict: metrics.LIMITER_DECISIONS.labels("rejected", reason)
                          for verdict, reason in _REASONS.items()}
        self._rejected_unavailable = metrics.LIMITER_DECISIONS.labels("rejected", "redis_unavailable")

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
                f"Request too large: {tokens} tokens requested (the input, plus max_tokens for a completion), but "
                f"this key is limited to {tpm} tokens per minute. Send a shorter input (or fewer embedding "
                "inputs) or a lower max_tokens.",
                reason="tpm", headers={"x-ratelimit-limit-tokens": str(tpm)})

        now = time.monotonic()
        remembered = self._over_rpm.get(key.id)
        if remembered is not None:
            if now < remembered.until:
                self._reject(key, aged_reply(remembered.reply, (now - remembered.sent) * 1000, tpm))
            del self._over_rpm[key.id]

        lease_id = f"{self._lease_prefix}:{next(self._lease_ids)}" if max_concurrent else ""
        health = self._health
        if not health.may_call(now):
            return self._fallback(key, request_id, tokens, lease_id)
        probe = health.claim_probe()   # one request tests a recovering Redis; the others fall back
        # Shielded: a client that goes away mid-call must not tear the call down halfway (Redis may
        # already be granting the reservation, and a half-used connection would be dropped);
        # the call completes and whatever it granted is handed back (_abandoned).
        call = asyncio.ensure_future(self._ask(key.id, (rpm, tpm, max_concurrent, tokens, lease_id, self._lease_ms)))
        try:
            reply = await asyncio.shield(call)
        except REDIS_FAILURES as exc:
            health.failed(exc)
            return self._fallback(key, request_id, tokens, lease_id)
        except Exception as exc:  # a client bug is still "no answer from Redis", never a 500
            log.exception("rate limiter: unexpected error from the Redis client")
            health.failed(exc)
            return self._fallback(key, request_id, tokens, lease_id)
        except asyncio.CancelledError:
            self._background.add(call)                  # held until it completes
            call.add_done_callback(self._background.discard)
            call.add_done_callback(lambda done: self._abandoned(done, key.id, tpm, tokens, lease_id))
            raise
        finally:
            if probe:
                health.end_probe()
        health.answered()

        if reply.verdict != ALLOWED:
            if reply.verdict == OVER_RPM:
                self._remember_over_rpm(key.id, now, reply)
            self._reject(key, reply)
        self._allowed.inc()
        reservation = Reservation(key.id, request_id, tokens, "redis",
                                  rate_limit_headers(rpm, tpm, reply, rejected=False), lease_id, tpm, now)
        if lease_id:
            self._in_flight[lease_id] = reservation
        return reservation

    async def _ask(self, key_id: str, args: Sequence[ScriptArg]) -> Reply:
        return Reply._make(await self._call(self._reserve, limiter_keys(key_id), args))

    async def _call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        async with self._calls:
            return await self._scripts.run(script, keys, args)

    def _abandoned(self, call: asyncio.Future[Reply], key_id: str, tpm: int, tokens: int, lease_id: str) -> None:
        """The caller of a reserve() went away; if Redis admitted it, give everything back."""
        if call.cancelled() or call.exception() is not None or call.result().verdict != ALLOWED:
            return
        if lease_id or tpm:
            self._in_background(self._call(self._settle, limiter_keys(key_id),
                                           (tpm if tokens else 0, tokens, lease_id)))

    def _in_background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)                       # held, so it is not collected mid-flight
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("rate limiter: background task failed: %r", task.exception())

    def _fallback(self, key: ApiKey, request_id: str, tokens: int, lease_id: str) -> Reservation:
        if self._failure_mode == "closed":
            self._rejected_unavailable.inc()
            raise ServiceUnavailable("Rate limiting is temporarily unavailable; retry shortly.",
                                     reason="redis_unavailable",
                                     retry_after=max(1.0, self._health.down_until - time.monotonic()))
        rpm, tpm = key.rpm or 0, key.tpm or 0
        reply = self._local.reserve(key.id, rpm, tpm, key.max_concurrent or 0, tokens, lease_id)
        if reply.verdict != ALLOWED:
            self._reject(key, reply)
        self._allowed_local.inc()
        return Reservation(key.id, request_id, tokens, "local", rate_limit_headers(rpm, tpm, reply, rejected=False),
                           lease_id, tpm)

    def _reject(self, key: ApiKey, reply: Reply) -> NoReturn:
        verdict = reply.verdict
        self._rejected[verdict].inc()
        if verdict == OVER_RPM:
            message = f"Rate limit reached for requests: limit {key.rpm} per minute."
        elif verdict == OVER_TPM:
            message = f"Rate limit reached for tokens: limit {key.tpm} per minute."
        else:
            message = f"Too many concurrent requests: limit {key.max_concurrent} at a time."
        retry = format_duration(reply.retry_after_ms)
        raise RateLimited(f"{message} Please try again in {retry}.", reason=_REASONS[verdict],
                          headers=rate_limit_headers(key.rpm or 0, key.tpm or 0, reply, rejected=True))

    def _remember_over_rpm(self, key_id: str, sent: float, reply: Reply) -> None:
        # `sent` precedes the moment Redis decided, so `until` never outlasts the real refill:
        # a remembered rejection is one Redis would have given too.
        if len(self._over_rpm) >= 10_000:
            now = time.monotonic()
            for stale in [k for k, v in self._over_rpm.items() if v.until <= now]:
                del self._over_rpm[stale]
        self._over_rpm[key_id] = _OverRpm(until=sent + reply.retry_after_ms / 1000, sent=sent, reply=reply)

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
            delta = res.settle_tokens(actual_tokens)
            lease_id = res.take_lease() if release else ""
            if lease_id:
                self._in_flight.pop(lease_id, None)
            if not delta and not lease_id:
                return
            if res.mode == "local":
                self._local.give_back(res.key_id, res.tpm, delta)
                if lease_id:
                    self._local.release(res.key_id, lease_id)
            elif res.mode == "redis":
                await self._call(self._settle, limiter_keys(res.key_id), (res.tpm if delta else 0, delta, lease_id))
        except REDIS_FAILURES as exc:
            # A lease not freed here lapses by itself; tokens not given back are a small overcharge.
            self._health.failed(exc)
        except Exception:
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
        if not leases or self._health.backing_off(now):
            return
        try:
            for start in range(0, len(leases), _RENEW_BATCH):
                batch = leases[start:start + _RENEW_BATCH]
                await self._call(self._renew, keys=[limiter_keys(r.key_id).leases for r in batch],
                                 args=[self._lease_ms, *(r.lease_id for r in batch)])
        except REDIS_FAILURES as exc:
            self._health.failed(exc)
        except Exception:
            log.exception("rate limiter: renewing leases failed")

    # -- Redis health (redis_health.py) -------------------------------------------------------

    async def ping(self) -> bool:
        try:
            await self._probe.ping()
        except Exception as exc:  # noqa: BLE001 - a probe answers, it never raises
            self._health.failed(exc)
            return False
        self._health.reachable()
        return True
