"""The contract of the limiter's Lua scripts (limiter_v1*.lua): their source, the Redis key
names they touch, and what limiter_v1.lua answers.

Everything that speaks to these scripts -- the limiter, the local fallback that mimics them,
the benchmarks that call them directly -- takes the key names and the reply's shape from here.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

KEY_PREFIX = "rl:v1:"     # carried by every Redis key limiter_v1*.lua touches

# Verdicts, as limiter_v1.lua returns them.
ALLOWED, OVER_RPM, OVER_TPM, OVER_CONCURRENCY = 0, 1, 2, 3


class LimiterKeys(NamedTuple):
    """One API key's Redis keys. The key id sits in a hash tag ({...}) so both land in the same
    Redis Cluster slot, as a script touching both needs."""
    bucket: str       # hash: requests and tokens levels and their times (rl, rt, tl, tt)
    leases: str       # sorted set: concurrency lease id -> expiry (ms)


def limiter_keys(key_id: str) -> LimiterKeys:
    """The Redis key names of one API key (or of any name a benchmark uses as one)."""
    base = f"{KEY_PREFIX}{{{key_id}}}"
    return LimiterKeys(f"{base}:b", f"{base}:c")


class Reply(NamedTuple):
    """limiter_v1.lua's answer (LocalLimiter.reserve gives the same)."""
    verdict: int              # ALLOWED | OVER_RPM | OVER_TPM | OVER_CONCURRENCY
    requests_left: int
    requests_reset_ms: float  # until the requests bucket is full again (aged_reply: fractional)
    tokens_left: int
    tokens_reset_ms: float
    retry_after_ms: int       # until the request would fit (0 when allowed)
    leases_held: int


def load_script(name: str) -> str:
    """The source of one of the package's Lua scripts."""
    return resources.files("llm_gateway").joinpath(name).read_text(encoding="utf-8")
