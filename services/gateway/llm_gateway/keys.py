"""API keys: format, hashing, the PostgreSQL store and the in-process lookup cache.

A key reads "sk-<id>-<secret>". The id is public (it names the key in logs, the CLI and
usage records); the secret is 32 random bytes from `secrets` and only its SHA-256 is
stored. A slow password hash (bcrypt, scrypt) protects low-entropy *passwords* against
offline guessing; a 256-bit random secret cannot be guessed whatever the hash, so bcrypt
would only put ~100 ms of CPU on the request path for every cache miss, for no gain.

Lookups are cached in-process for `cache_ttl_seconds`, misses included, so PostgreSQL is
not on the hot path. Revoking a key therefore takes effect within one TTL on every replica.

PostgreSQL unreachable (stale-if-error): a key whose entry has gone stale is still served
from its last known answer for up to `stale_if_error_seconds` past its TTL, as long as
refreshing it fails; every request retries the refresh, so once PostgreSQL answers again the
fresh row (a revocation included) applies at once. An id with no usable entry gets 503.

The cost of failed authentication is bounded (a flood of random ids must not reach
PostgreSQL, nor delay the lookups of real keys):
- ids that exist and ids that do not are cached apart (misses in a cachetools TTL cache:
  O(1) expiry and eviction), so random ids can only evict other random ids, never real keys;
- each lookup that finds nothing is charged to the client (X-Forwarded-For as set by the
  edge, else the peer address): past `auth_failures_per_minute` of them, the client gets 429
  for ids not in the cache, without a PostgreSQL round trip (checked again once a queued
  lookup gets its turn, so a concurrent flood is cut short too); keys already cached keep
  working for it, and lookups PostgreSQL failed are not charged;
- lookups of ids not in the cache use at most half the pool's connections, so refreshing a
  known key always finds one; a connection is waited for at most `acquire_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

import asyncpg
import cachetools
from starlette.requests import HTTPConnection

from . import metrics
from .errors import AuthenticationError, RateLimited, ServiceUnavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-"
_ID_BYTES = 8          # 16 hex characters: public, only needs to be unique
_SECRET_BYTES = 32     # 256 bits of entropy
_KEY_SHAPE = re.compile(r"^sk-([0-9a-f]{16})-([A-Za-z0-9_-]{43})$")

# OpenAI's wording where it has one, so clients and their users recognise the errors.
_MESSAGES = {
    "missing": "You didn't provide an API key. You need to provide your API key in an Authorization header "
               "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    "malformed": "Malformed API key: expected 'Authorization: Bearer sk-<id>-<secret>'.",
    # Unknown id and wrong secret read the same, so the answer does not tell which ids exist.
    "unknown": "Incorrect API key provided.",
    "invalid_secret": "Incorrect API key provided.",
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
}


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    tier: str
    models: tuple[str, ...]          # empty = every model (adapters included)
    rpm: int | None                  # None = unlimited, for each limit
    tpm: int | None
    max_concurrent: int | None
    max_tokens: int | None
    expires_at: datetime | None
    revoked: bool
    created_at: datetime | None = None

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


def generate_key() -> tuple[str, str, str]:
    """A new key: (full key "sk-<id>-<secret>", id, secret)."""
    key_id = secrets.token_hex(_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return f"{KEY_PREFIX}{key_id}-{secret}", key_id, secret


def hash_secret(secret: str) -> bytes:
    """SHA-256 of the secret (see the module docstring for why a fast hash is right here)."""
    return hashlib.sha256(secret.encode()).digest()


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    match = _KEY_SHAPE.match(token)
    return (match.group(1), match.group(2)) if match else None


_COLUMNS = ("id, secret_hash, name, tier, models, rpm, tpm, max_concurrent, max_tokens, expires_at, revoked_at, "
            "created_at")


def _row_to_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(id=row["id"], name=row["name"], tier=row["tier"], models=tuple(row["models"] or ()),
                  rpm=row["rpm"], tpm=row["tpm"], max_concurrent=row["max_concurrent"],
                  max_tokens=row["max_tokens"], expires_at=row["expires_at"],
                  revoked=row["revoked_at"] is not None, created_at=row["created_at"])


@dataclass(slots=True)
class _Entry:
    """One cached lookup; key is None for an id that does not exist (negative cache)."""
    fresh_until: float               # time.monotonic()
    key: ApiKey | None
    secret_hash: bytes
    expires_ts: float | None         # key.expires_at as a Unix time, compared cheaply per request


# A dead pooled connection (PostgreSQL restarted): the lookup is retried once on a new one.
# (InternalClientError: asyncpg's protocol state after the server vanished mid-query.)
_CONNECTION_LOST = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                    ConnectionError)
_UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.InternalClientError)
_LOOKUP = f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1"


def client_address(request: HTTPConnection) -> str | None:
    """Who sent a request (a Starlette request), for the failed-authentication limit: the last
    X-Forwarded-For entry, the one the edge proxy adds (the address it saw; entries a client
    sent come before it), else the peer."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rpartition(",")[2].strip() or None
    return request.client.host if request.client else None


class KeyStore:
    """Authenticates requests against api_keys, with a short-lived in-process cache."""

    def __init__(self, pool: asyncpg.Pool, cache_ttl_seconds: float, max_cache_entries: int = 100_000, *,
                 stale_if_error_seconds: float = 900.0, acquire_timeout_seconds: float = 2.0,
                 auth_failures_per_minute: int = 60):
        self._pool = pool
        self._ttl = max(0.0, cache_ttl_seconds)
        self._stale_for = max(0.0, stale_if_error_seconds)
        self._acquire_timeout = acquire_timeout_seconds
        # Ids that exist: a plain dict (the hot path reads it; a TTLCache read costs ~40x more),
        # kept past the TTL for stale-if-error. Only real keys enter it, so a flood cannot grow it.
        # Misses, which a flood can make up at will: a bounded TTL cache of their own.
        self._known: dict[str, _Entry] = {}
        self._max_known = max(1, max_cache_entries)
        self._unknown: cachetools.TTLCache[str, _Entry] = cachetools.TTLCache(
            max_cache_entries, ttl=self._ttl or 1e-9)
        self._pending: dict[str, asyncio.Task[_Entry]] = {}   # coalesces concurrent misses per id
        size = pool.get_max_size() if hasattr(pool, "get_max_size") else 10
        self._new_id_lookups = asyncio.Semaphore(max(1, size // 2))
        self._guess_limit = max(1, auth_failures_per_minute)
        self._guesses: cachetools.TTLCache[str, tuple[float, float]] = cachetools.TTLCache(100_000, ttl=60.0)
        self._failures = {reason: metrics.AUTH_FAILURES.labels(reason) for reason in (*_MESSAGES, "throttled")}
        self._postgres_up = metrics.DEPENDENCY_UP.labels("postgres")

    # -- the hot path -------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, request: HTTPConnection | None = None) -> ApiKey:
        """The key of a request's Authorization header. `request` (a Starlette request) names
        the client for the failed-authentication limit; it is only read when the id is not in
        the cache, and without it there is no such limit (admin tools, tests)."""
        if not authorization:
            self._fail("missing")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            self._fail("malformed")
        parsed = parse_key(token.strip())
        if parsed is None:
            self._fail("malformed")
        key_id, secret = parsed

        entry = self._known.get(key_id) or self._unknown.get(key_id)
        if entry is None or entry.fresh_until < time.monotonic():
            entry = await self._lookup(key_id, entry, request)
        key = entry.key
        if key is None:
            self._fail("unknown")
        # Secret first: only the key's holder learns whether it is revoked or expired.
        if not hmac.compare_digest(hash_secret(secret), entry.secret_hash):
            self._fail("invalid_secret")
        if key.revoked:
            self._fail("revoked")
        if entry.expires_ts is not None and entry.expires_ts <= time.time():
            self._fail("expired")
        return key

    def _fail(self, reason: str) -> NoReturn:
        self._failures[reason].inc()
        raise AuthenticationError(_MESSAGES[reason], reason=reason)

    def _guess_level(self, client: str, now: float) -> float:
        """What is left of the client's allowance of lookups that found nothing (a token bucket)."""
        state = self._guesses.get(client)
        if state is None:
            return float(self._guess_limit)
        return min(float(self._guess_limit), state[0] + (now - state[1]) * self._guess_limit / 60.0)

    def _check_allowance(self, client: str) -> None:
        """429 for a client that used up its allowance of failed lookups: no PostgreSQL round trip."""
        level = self._guess_level(client, time.monotonic())
        if level < 1:
            self._failures["throttled"].inc()
            retry = max(1, math.ceil((1 - level) * 60.0 / self._guess_limit))
            raise RateLimited(f"Too many failed authentication attempts. Please try again in {retry}s.",
                              reason="auth_failures", headers={"Retry-After": str(retry)})

    def _charge(self, client: str) -> None:
        now = time.monotonic()
        self._guesses[client] = (self._guess_level(client, now) - 1, now)

    async def _lookup(self, key_id: str, stale: _Entry | None, request: HTTPConnection | None) -> _Entry:
        known = stale is not None and stale.key is not None
        client = client_address(request) if not known and request is not None else None
        if client is not None:
            self._check_allowance(client)
        # One query per id however many requests miss at once. The query runs in its own task
        # so a client that disconnects (cancelling its request) does not cancel the others' wait.
        task = self._pending.get(key_id)
        if task is None:
            task = asyncio.ensure_future(self._fetch_and_remember(key_id, known, client))
            self._pending[key_id] = task
            task.add_done_callback(lambda done: self._settled(key_id, done))
        try:
            entry = await asyncio.shield(task)
        except ServiceUnavailable:
            if stale is not None and known and time.monotonic() <= stale.fresh_until + self._stale_for:
                return stale               # stale-if-error: the last known answer
            raise
        return entry

    def _settled(self, key_id: str, task: asyncio.Task[_Entry]) -> None:
        self._pending.pop(key_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not logged as lost

    async def _fetch_and_remember(self, key_id: str, known: bool, client: str | None = None) -> _Entry:
        entry = await self._fetch(key_id, known, client)
        self._remember(key_id, entry)
        return entry

    async def _fetch(self, key_id: str, known: bool = True, client: str | None = None) -> _Entry:
        try:
            if known:
                row = await self._query(key_id)
            else:
                # Ids not in the cache take at most half the pool: a flood of them queues here,
                # and the refresh of a real key always finds a connection.
                try:
                    async with asyncio.timeout(self._acquire_timeout):
                        await self._new_id_lookups.acquire()
                except TimeoutError:
                    raise ServiceUnavailable("Too many API key lookups at once; retry shortly.",
                                             reason="key_lookups_busy", retry_after=1) from None
                try:
                    if client is not None:
                        self._check_allowance(client)   # again: its earlier guesses may have failed meanwhile
                    row = await self._query(key_id)
                    if row is None and client is not None:
                        self._charge(client)            # found nothing: a guess, charged before the next
                finally:                                # lookup queued here gets the slot and checks
                    self._new_id_lookups.release()
        except _UNAVAILABLE as exc:
            self._postgres_up.set(0)
            log.warning("api key lookup failed: %s", type(exc).__name__)
            raise ServiceUnavailable("The API key store is unavailable; retry shortly.",
                                     reason="postgres_unavailable", retry_after=1) from exc
        self._postgres_up.set(1)
        fresh_until = time.monotonic() + self._ttl
        if row is None:
            return _Entry(fresh_until, None, b"", None)
        key = _row_to_key(row)
        expires_ts = key.expires_at.timestamp() if key.expires_at else None
        return _Entry(fresh_until, key, bytes(row["secret_hash"]), expires_ts)

    async def _query(self, key_id: str) -> asyncpg.Record | None:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                return await conn.fetchrow(_LOOKUP, key_id)
        except _CONNECTION_LOST:
            # PostgreSQL restarted (or a proxy dropped us): the pool's other idle connections
            # died with this one. Replace them all, and ask once more on a fresh connection
            # (a read, safe to repeat) instead of failing one request per dead connection.
            await self._pool.expire_connections()
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                return await conn.fetchrow(_LOOKUP, key_id)

    def _remember(self, key_id: str, entry: _Entry) -> None:
        if entry.key is not None:
            if key_id not in self._known and len(self._known) >= self._max_known:
                del self._known[next(iter(self._known))]    # the longest cached; O(1)
            self._known[key_id] = entry       # kept past its TTL too: served if PostgreSQL fails
            self._unknown.pop(key_id, None)
        elif self._ttl > 0:
            self._unknown[key_id] = entry
            self._known.pop(key_id, None)

    def forget(self, key_id: str) -> None:
        """Drop a cached lookup (this process only; other replicas see changes within the TTL)."""
        self._known.pop(key_id, None)
        self._unknown.pop(key_id, None)

    # -- administration (admin.py) ------------------------------------------------------------

    async def create(self, *, name: str, tier: str, models: Iterable[str] = (), rpm: int | None = None,
                     tpm: int | None = None, max_concurrent: int | None = None, max_tokens: int | None = None,
                     expires_at: datetime | None = None) -> tuple[str, ApiKey]:
        """Store a new key; returns (the full key, shown once and never again, its record)."""
        if not name.strip():
            raise ValueError("name must not be empty")
        if not tier.strip():
            raise ValueError("tier must not be empty")
        for label, value in (("rpm", rpm), ("tpm", tpm), ("max_concurrent", max_concurrent),
                             ("max_tokens", max_tokens)):
            if value is not None and value <= 0:
                raise ValueError(f"{label} must be a positive integer")
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        model_list = [m.strip() for m in models if m.strip()]
        full_key, key_id, secret = generate_key()
        row = await self._pool.fetchrow(
            "INSERT INTO api_keys"
            " (id, secret_hash, name, tier, models, rpm, tpm, max_concurrent, max_tokens, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_COLUMNS}",
            key_id, hash_secret(secret), name.strip(), tier.strip(), model_list, rpm, tpm, max_concurrent,
            max_tokens, expires_at)
        assert row is not None  # INSERT ... RETURNING answers with the row it inserted
        self.forget(key_id)  # a negative entry for this id (vanishingly unlikely) must not linger
        return full_key, _row_to_key(row)

    async def list(self) -> list[ApiKey]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_row_to_key(row) for row in rows]

    async def get(self, key_id: str) -> ApiKey | None:
        row = await self._pool.fetchrow(_LOOKUP, key_id)
        return _row_to_key(row) if row else None

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no such key exists or it was already revoked."""
        status = await self._pool.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
        self.forget(key_id)
        return str(status).endswith(" 1")
