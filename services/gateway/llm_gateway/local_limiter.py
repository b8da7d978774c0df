"""The in-process fallback limiter, used while Redis is unreachable (failure_mode "local").

Same buckets and the same answers as limiter_v1.lua, but counted in this process only: with
N gateway processes a key may get up to N times its limits while Redis is away. That is the
trade this mode makes (keep serving, limits stay roughly right) against failure_mode
"closed" (refuse everything until Redis is back).

Runs on the event loop thread only, so it needs no locks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .limiter_scripts import ALLOWED, OVER_CONCURRENCY, OVER_RPM, OVER_TPM, Reply


class LocalLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, tuple[float, float]] = {}   # key id -> (level, at ms)
        self._tokens: dict[str, tuple[float, float]] = {}
        self._leases: dict[str, set[str]] = {}                 # key id -> lease ids held

    def _now_ms(self) -> float:
        return self._clock() * 1000.0

    @staticmethod
    def _level(state: tuple[float, float] | None, limit: int, now: float) -> float:
        if state is None:
            return float(limit)
        return min(float(limit), state[0] + (now - state[1]) * limit / 60000.0)

    def reserve(self, key_id: str, rpm: int, tpm: int, max_concurrent: int, tokens: int,
                lease_id: str) -> Reply:
        """Limits of 0 mean unlimited. Answers as limiter_v1.lua does."""
        now = self._now_ms()
        verdict, retry_ms = ALLOWED, 0.0
        req_level = tok_level = 0.0
        if rpm > 0:
            req_level = self._level(self._requests.get(key_id), rpm, now)
            if req_level < 1:
                verdict, retry_ms = OVER_RPM, (1 - req_level) * 60000.0 / rpm
        if tpm > 0:
            tok_level = self._level(self._tokens.get(key_id), tpm, now)
            if tok_level < tokens and verdict == ALLOWED:
                verdict, retry_ms = OVER_TPM, (tokens - tok_level) * 60000.0 / tpm
        held = len(self._leases.get(key_id, ()))
        if max_concurrent > 0 and held >= max_concurrent and verdict == ALLOWED:
            verdict, retry_ms = OVER_CONCURRENCY, 1000.0

        if verdict == ALLOWED:
            if rpm > 0:
                req_level -= 1
                self._requests[key_id] = (req_level, now)
            if tpm > 0:
                tok_level -= tokens
                self._tokens[key_id] = (tok_level, now)
            if max_concurrent > 0:
                self._leases.setdefault(key_id, set()).add(lease_id)
                held += 1
        return Reply(verdict, math.floor(req_level), _reset_ms(rpm, req_level), math.floor(tok_level),
                     _reset_ms(tpm, tok_level), math.ceil(retry_ms), held)

    def give_back(self, key_id: str, tpm: int, tokens: int) -> None:
        """Return unused tokens (negative: charge tokens used beyond the reservation)."""
        if tpm <= 0 or tokens == 0:
            return
        now = self._now_ms()
        level = min(float(tpm), self._level(self._tokens.get(key_id), tpm, now) + tokens)
        self._tokens[key_id] = (level, now)

    def release(self, key_id: str, lease_id: str) -> None:
        held = self._leases.get(key_id)
        if held is not None:
            held.discard(lease_id)
            if not held:
                del self._leases[key_id]


def _reset_ms(limit: int, level: float) -> int:
    if limit <= 0 or level >= limit:
        return 0
    return math.ceil((limit - level) * 60000.0 / limit)
