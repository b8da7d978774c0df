"""OpenAI's rate-limit response headers, from the limiter's answer.

Every admitted or refused request of a limited key carries x-ratelimit-{limit,remaining,reset}-
{requests,tokens} for the limits the key has; a refusal adds Retry-After (whole seconds) and
retry-after-ms (read by the official openai clients).
"""

from __future__ import annotations

import math

from .limiter_scripts import Reply


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


def rate_limit_headers(rpm: int, tpm: int, reply: Reply, *, rejected: bool) -> dict[str, str]:
    """The headers for a key limited to `rpm` requests and `tpm` tokens a minute (0: no limit)."""
    headers: dict[str, str] = {}
    if rejected:
        retry_ms = max(0, reply.retry_after_ms)
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
        headers["retry-after-ms"] = str(retry_ms)
    if rpm:
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, reply.requests_left))
        headers["x-ratelimit-reset-requests"] = format_duration(reply.requests_reset_ms)
    if tpm:
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, reply.tokens_left))
        headers["x-ratelimit-reset-tokens"] = format_duration(reply.tokens_reset_ms)
    return headers
