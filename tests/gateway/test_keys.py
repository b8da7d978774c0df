"""API keys against the real PostgreSQL: migrations, hashing, authentication and its cache."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from llm_gateway.db import create_pool, migrate, migration_files
from llm_gateway.errors import AuthenticationError, RateLimited, ServiceUnavailable
from llm_gateway.keys import ApiKey, KeyStore, generate_key, hash_secret, parse_key
from tests.support.services import ThrowawayPostgres


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(migrated_database_url):
    pool = await create_pool(migrated_database_url)
    yield pool
    await pool.close()


@pytest.fixture
def store(pool) -> KeyStore:
    return KeyStore(pool, cache_ttl_seconds=60)


def auth_failures(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_auth_failures_total", {"reason": reason}) or 0.0


async def rejected_reason(store: KeyStore, header: str | None) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await store.authenticate(header)
    err = caught.value
    assert err.status == 401
    assert err.body()["error"]["code"] == "invalid_api_key"
    assert err.body()["error"]["message"]
    return err.reason


# -- migrations --------------------------------------------------------------------------------

async def test_migrate_is_idempotent_and_safe_when_run_concurrently(postgres_admin_dsn):
    name = f"llmnode_migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = postgres_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        first, second = await asyncio.gather(migrate(dsn), migrate(dsn))
        expected = [n for n, _ in migration_files()]
        assert expected and expected[0].startswith("0001_")
        # Exactly one of the two racing runs applied everything; the other found nothing to do.
        assert sorted([first, second], key=len) == [[], expected]
        assert await migrate(dsn) == []
        conn = await asyncpg.connect(dsn)
        try:
            recorded = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]
            indexes = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'usage_records'")
        finally:
            await conn.close()
        assert recorded == expected
        assert any("(key_id, created_at)" in r["indexdef"] for r in indexes)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


# -- key format and storage --------------------------------------------------------------------

def test_generated_keys_parse_and_are_unique():
    keys = {generate_key() for _ in range(200)}
    assert len({k[0] for k in keys}) == 200
    for full, key_id, secret in keys:
        assert full == f"sk-{key_id}-{secret}"
        assert parse_key(full) == (key_id, secret)
        assert len(secret) >= 43           # 32 random bytes
    for bad in ["", "sk-", "sk-abc-def", "pk-0123456789abcdef-" + "a" * 43, full + "x", full.upper()]:
        assert parse_key(bad) is None


async def test_only_a_hash_of_the_secret_is_stored(store, pool):
    full, key = await store.create(name="hashing", tier="standard")
    _, secret = parse_key(full)
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key.id)
    assert bytes(row["secret_hash"]) == hash_secret(secret)
    assert all(secret not in str(value) for value in dict(row).values())


async def test_create_stores_every_field(store):
    expires = datetime.now(UTC) + timedelta(days=3)
    full, key = await store.create(name="fields", tier="premium", models=["tiny-llama", "adapter-a"], rpm=7,
                                   tpm=1000, max_concurrent=2, max_tokens=64, expires_at=expires)
    assert isinstance(key, ApiKey)
    got = await store.authenticate(f"Bearer {full}")
    assert (got.name, got.tier, got.models, got.rpm, got.tpm, got.max_concurrent, got.max_tokens) == (
        "fields", "premium", ("tiny-llama", "adapter-a"), 7, 1000, 2, 64)
    assert abs((got.expires_at - expires).total_seconds()) < 0.001
    assert not got.revoked
    assert got.allows("tiny-llama") and got.allows("adapter-a") and not got.allows("other")
    _, anything = await store.create(name="all-models", tier="batch")
    assert anything.models == () and anything.allows("tiny-llama") and anything.allows("any-adapter")
    with pytest.raises(ValueError):
        await store.create(name="bad", tier="standard", rpm=0)


# -- authentication ----------------------------------------------------------------------------

async def test_valid_key_authenticates(store):
    full, key = await store.create(name="ok", tier="standard")
    got = await store.authenticate(f"Bearer {full}")
    assert got.id == key.id and got.tier == "standard"
    assert (await store.authenticate(f"bearer {full}")).id == key.id   # scheme is case-insensitive


@pytest.mark.parametrize("header, reason", [
    (None, "missing"),
    ("", "missing"),
    ("Basic abc", "malformed"),
    ("Bearer", "malformed"),
    ("Bearer not-a-key", "malformed"),
    ("Bearer sk-0123456789abcdef-short", "malformed"),
])
async def test_missing_and_malformed_keys(store, header, reason):
    before = auth_failures(reason)
    assert await rejected_reason(store, header) == reason
    assert auth_failures(reason) == before + 1


async def test_unknown_key(store):
    full, _, _ = generate_key()
    assert await rejected_reason(store, f"Bearer {full}") == "unknown"


async def test_invalid_secret(store):
    _full, key = await store.create(name="secret", tier="standard")
    _, _, other_secret = generate_key()
    assert await rejected_reason(store, f"Bearer sk-{key.id}-{other_secret}") == "invalid_secret"
    # Unknown id and wrong secret are indistinguishable to the caller.
    unknown_full, _, _ = generate_key()
    with pytest.raises(AuthenticationError) as unknown:
        await store.authenticate(f"Bearer {unknown_full}")
    with pytest.raises(AuthenticationError) as wrong:
        await store.authenticate(f"Bearer sk-{key.id}-{other_secret}")
    assert unknown.value.body() == wrong.value.body()


async def test_expired_key(store):
    full, _ = await store.create(name="expired", tier="standard",
                                 expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert await rejected_reason(store, f"Bearer {full}") == "expired"


async def test_key_expires_while_cached(pool):
    store = KeyStore(pool, cache_ttl_seconds=60)
    full, _ = await store.create(name="expiring", tier="standard",
                                 expires_at=datetime.now(UTC) + timedelta(seconds=2))
    await store.authenticate(f"Bearer {full}")
    await asyncio.sleep(2.1)
    assert await rejected_reason(store, f"Bearer {full}") == "expired"


async def test_revoked_key(store):
    full, key = await store.create(name="revoked", tier="standard")
    assert await store.revoke(key.id) is True
    assert await store.revoke(key.id) is False           # already revoked
    assert await store.revoke("0123456789abcdef") is False
    assert await rejected_reason(store, f"Bearer {full}") == "revoked"


async def test_revocation_takes_effect_within_the_cache_ttl(pool):
    # Two stores = two gateway replicas: one serves traffic, the other (admin) revokes.
    serving = KeyStore(pool, cache_ttl_seconds=2.0)
    admin = KeyStore(pool, cache_ttl_seconds=2.0)
    full, key = await admin.create(name="revoke-ttl", tier="standard")
    assert (await serving.authenticate(f"Bearer {full}")).id == key.id
    assert await admin.revoke(key.id)
    # Still cached in the serving replica: accepted, without asking PostgreSQL.
    assert (await serving.authenticate(f"Bearer {full}")).id == key.id
    await asyncio.sleep(2.1)
    assert await rejected_reason(serving, f"Bearer {full}") == "revoked"


# -- the cache keeps PostgreSQL off the hot path ----------------------------------------------

class CountingPool:
    """A real pool whose connections report every query they send to PostgreSQL."""

    def __init__(self):
        self.key_lookups = 0

    def _logged(self, query) -> None:
        if "FROM api_keys WHERE id" in query.query:
            self.key_lookups += 1

    async def __aenter__(self):
        async def init(conn):
            conn.add_query_logger(self._logged)
        self.pool = await create_pool(self.dsn, init=init)
        return self

    async def __aexit__(self, *exc):
        await self.pool.close()


@pytest.fixture
def counting(migrated_database_url) -> CountingPool:
    counting = CountingPool()
    counting.dsn = migrated_database_url
    return counting


async def test_positive_and_negative_lookups_are_cached_and_coalesced(counting):
    async with counting:
        store = KeyStore(counting.pool, cache_ttl_seconds=60)
        full, key = await store.create(name="cached", tier="standard")
        unknown, _, _ = generate_key()

        results = await asyncio.gather(*(store.authenticate(f"Bearer {full}") for _ in range(50)))
        assert {r.id for r in results} == {key.id}
        assert counting.key_lookups == 1            # 50 concurrent misses, one query
        outcomes = await asyncio.gather(*(store.authenticate(f"Bearer {unknown}") for _ in range(50)),
                                        return_exceptions=True)
        assert all(isinstance(o, AuthenticationError) and o.reason == "unknown" for o in outcomes)
        assert counting.key_lookups == 2
        for _ in range(100):                        # then both answered from the cache
            await store.authenticate(f"Bearer {full}")
            with pytest.raises(AuthenticationError):
                await store.authenticate(f"Bearer {unknown}")
        assert counting.key_lookups == 2


async def test_lookups_are_repeated_after_the_ttl(counting):
    async with counting:
        store = KeyStore(counting.pool, cache_ttl_seconds=0.2)
        full, _ = await store.create(name="ttl", tier="standard")
        await store.authenticate(f"Bearer {full}")
        await store.authenticate(f"Bearer {full}")
        assert counting.key_lookups == 1
        await asyncio.sleep(0.3)
        await store.authenticate(f"Bearer {full}")
        assert counting.key_lookups == 2
        uncached = KeyStore(counting.pool, cache_ttl_seconds=0)
        for _ in range(3):
            await uncached.authenticate(f"Bearer {full}")
        assert counting.key_lookups == 5


async def test_a_cancelled_caller_does_not_fail_the_others(pool):
    store = KeyStore(pool, cache_ttl_seconds=60)
    full, key = await store.create(name="cancel", tier="standard")
    real_fetch = store._fetch

    async def slow_fetch(key_id, *args):
        await asyncio.sleep(0.1)
        return await real_fetch(key_id, *args)

    store._fetch = slow_fetch
    first = asyncio.create_task(store.authenticate(f"Bearer {full}"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(store.authenticate(f"Bearer {full}"))
    await asyncio.sleep(0.01)
    first.cancel()                           # e.g. its client disconnected
    assert (await second).id == key.id
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_list_never_exposes_secrets(store):
    full, key = await store.create(name="listed", tier="batch")
    listed = {k.id: k for k in await store.list()}
    assert listed[key.id].name == "listed"
    assert not any(hasattr(k, "secret_hash") for k in listed.values())
    assert full not in repr(listed)


async def test_postgresql_down_is_a_503_and_cached_keys_keep_working(log_dir):
    pg = ThrowawayPostgres(log_dir).start()
    try:
        await migrate(pg.dsn)
        pool = await create_pool(pg.dsn, min_size=0, timeout=2.0, command_timeout=2.0)
        store = KeyStore(pool, cache_ttl_seconds=60)
        cached, _ = await store.create(name="cached", tier="standard")
        uncached, _ = await store.create(name="uncached", tier="standard")
        await store.authenticate(f"Bearer {cached}")

        pg.crash()
        assert (await store.authenticate(f"Bearer {cached}")).name == "cached"   # from the cache
        with pytest.raises(ServiceUnavailable) as caught:
            await store.authenticate(f"Bearer {uncached}")
        assert caught.value.status == 503 and caught.value.reason == "postgres_unavailable"
        assert "Retry-After" in caught.value.headers
        assert REGISTRY.get_sample_value("gateway_dependency_up", {"dependency": "postgres"}) == 0

        pg.start()                                  # back: once it accepts, the next miss simply succeeds
        await _accepting(pg.dsn)
        assert (await store.authenticate(f"Bearer {uncached}")).name == "uncached"
        assert REGISTRY.get_sample_value("gateway_dependency_up", {"dependency": "postgres"}) == 1
        await pool.close()
    finally:
        pg.destroy()


# -- PostgreSQL down: stale-if-error ---------------------------------------------------------------

def _kill_postgres(pg: ThrowawayPostgres) -> None:
    pg.crash()


async def _accepting(dsn: str, timeout: float = 30.0) -> None:
    """Wait until PostgreSQL accepts connections (after a crash it first replays its log)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await (await asyncpg.connect(dsn, timeout=2)).close()
            return
        except (OSError, asyncpg.PostgresError):
            assert asyncio.get_running_loop().time() < deadline, "PostgreSQL did not come back"
            await asyncio.sleep(0.05)


async def test_postgresql_down_serves_known_keys_their_last_answer_with_the_default_ttl(log_dir):
    from llm_gateway.settings import Settings

    ttl = Settings().key_cache_ttl_seconds          # the default: the outage outlasts it below
    pg = ThrowawayPostgres(log_dir).start()
    try:
        await migrate(pg.dsn)
        pool = await create_pool(pg.dsn, min_size=0, timeout=2.0, command_timeout=2.0)
        short = KeyStore(pool, ttl, stale_if_error_seconds=0.5)
        admin = KeyStore(pool, 0)
        cached, _ = await admin.create(name="cached", tier="standard")
        revoked, revoked_key = await admin.create(name="revoked-meanwhile", tier="standard")
        never_seen, _ = await admin.create(name="never-seen", tier="standard")
        # Default stale-if-error window (15 min). Lookups PostgreSQL failed are no guesses: they
        # do not use up the client's allowance of failed authentications.
        store = KeyStore(pool, ttl, auth_failures_per_minute=2)
        client = FakeRequest("192.0.2.7")
        for header in (f"Bearer {cached}", f"Bearer {revoked}"):
            await store.authenticate(header)
        await short.authenticate(f"Bearer {cached}")
        assert await admin.revoke(revoked_key.id)   # not seen by `store` before the outage

        _kill_postgres(pg)
        await asyncio.sleep(ttl + 0.5)              # every entry is past its TTL
        assert (await store.authenticate(f"Bearer {cached}")).name == "cached"
        assert (await store.authenticate(f"Bearer {revoked}")).name == "revoked-meanwhile"  # last known
        assert REGISTRY.get_sample_value("gateway_dependency_up", {"dependency": "postgres"}) == 0
        unknown, _, _ = generate_key()
        for header in [f"Bearer {never_seen}", f"Bearer {unknown}"] * 3:   # nothing known: 503, not 401
            with pytest.raises(ServiceUnavailable) as caught:
                await store.authenticate(header, client)
            assert caught.value.status == 503 and caught.value.reason == "postgres_unavailable"
        with pytest.raises(ServiceUnavailable):     # past its stale-if-error window
            await short.authenticate(f"Bearer {cached}")

        pg.start()                                  # back: the revocation applies at once
        await _accepting(pg.dsn)
        assert await rejected_reason(store, f"Bearer {revoked}") == "revoked"
        assert (await store.authenticate(f"Bearer {never_seen}", client)).name == "never-seen"
        assert (await short.authenticate(f"Bearer {cached}")).name == "cached"
        await pool.close()
    finally:
        pg.destroy()


async def test_after_a_postgresql_restart_the_first_lookups_succeed(log_dir):
    """The pool's connections all die with PostgreSQL; a lookup that meets one retries once on a
    fresh connection instead of failing (and the pool replaces the others)."""
    pg = ThrowawayPostgres(log_dir).start()
    try:
        await migrate(pg.dsn)
        pool = await create_pool(pg.dsn, min_size=4, max_size=4, timeout=2.0, command_timeout=2.0)
        store = KeyStore(pool, 60)
        admin = KeyStore(pool, 0)
        keys = [(await admin.create(name=f"k{i}", tier="standard"))[0] for i in range(8)]
        _kill_postgres(pg)
        pg.start()
        await _accepting(pg.dsn)
        results = await asyncio.gather(*(store.authenticate(f"Bearer {k}") for k in keys), return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["ApiKey"] * 8
        await pool.close()
    finally:
        pg.destroy()


# -- a flood of unknown keys ---------------------------------------------------------------------

class FakeRequest:
    """What KeyStore reads of a Starlette request to tell clients apart."""

    def __init__(self, host: str, forwarded_for: str | None = None):
        self.headers = {"x-forwarded-for": forwarded_for} if forwarded_for else {}
        self.client = type("Address", (), {"host": host})()


async def test_one_client_flooding_unknown_keys_reaches_postgresql_only_its_allowance(counting):
    async with counting:
        # A generous wait for a lookup slot: counts are the point here, not a loaded machine's pace.
        store = KeyStore(counting.pool, cache_ttl_seconds=60, auth_failures_per_minute=20, acquire_timeout_seconds=30)
        full, key = await store.create(name="flooded", tier="standard")
        attacker, bystander = FakeRequest("10.0.0.9", "203.0.113.7"), FakeRequest("10.0.0.9", "198.51.100.1")
        await store.authenticate(f"Bearer {full}", bystander)
        before = counting.key_lookups
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(store.authenticate(f"Bearer {generate_key()[0]}", attacker) for _ in range(300)),
            return_exceptions=True)
        refilled = (time.monotonic() - started) * 20 / 60
        kinds = [(type(o).__name__, getattr(o, "status", None)) for o in outcomes]
        lookups = counting.key_lookups - before
        # Its allowance (and what refilled meanwhile), plus at most the other lookups already
        # running when it ran out (half the pool: 5).
        assert 20 <= lookups <= 20 + refilled + 4, (lookups, refilled)
        assert kinds.count(("AuthenticationError", 401)) == lookups
        assert kinds.count(("RateLimited", 429)) == 300 - lookups   # never reached PostgreSQL
        assert all(int(o.headers["Retry-After"]) >= 1 for o in outcomes if isinstance(o, RateLimited))
        # A cached key still works, even for the flooding client; other clients are unaffected.
        assert (await store.authenticate(f"Bearer {full}", attacker)).id == key.id
        with pytest.raises(AuthenticationError):
            await store.authenticate(f"Bearer {generate_key()[0]}", bystander)


async def test_a_flood_of_unknown_keys_from_many_clients_does_not_hold_up_real_keys(migrated_database_url):
    """Lookups of ids never seen take at most half the pool, so the refresh of a real key does
    not queue behind them (it used to wait for every flood lookup queued before it)."""
    pool = await create_pool(migrated_database_url, min_size=4, max_size=4)
    try:
        store = KeyStore(pool, cache_ttl_seconds=0.05, acquire_timeout_seconds=30)   # order, not pace
        full, key = await store.create(name="real", tier="standard")
        await store.authenticate(f"Bearer {full}")
        await asyncio.sleep(0.1)                             # stale: the next use asks PostgreSQL
        done: list[str] = []

        async def guess(i: int) -> None:
            try:
                await store.authenticate(f"Bearer {generate_key()[0]}", FakeRequest(f"10.1.{i // 250}.{i % 250}"))
            except (AuthenticationError, ServiceUnavailable):
                done.append("flood")

        async def real() -> None:
            assert (await store.authenticate(f"Bearer {full}", FakeRequest("192.0.2.1"))).id == key.id
            done.append("real")

        flood = [asyncio.create_task(guess(i)) for i in range(400)]
        await asyncio.sleep(0)                                # the flood is queued first
        await asyncio.gather(real(), *flood)
        assert len(done) == 401
        assert done.index("real") < 100, f"the real key came after {done.index('real')} flood lookups"
    finally:
        await pool.close()


async def test_a_connection_left_in_a_broken_state_is_a_503_not_a_500():
    """Seen under load when PostgreSQL was killed mid-query (scripts/bench/chaos.py): asyncpg
    raised InternalClientError ("cannot switch to state 12"), which escaped as a 500."""

    class BrokenConnection:
        async def fetchrow(self, *args):
            raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")

    class BrokenPool:
        def get_max_size(self) -> int:
            return 4

        def acquire(self, timeout=None):
            class Acquired:
                async def __aenter__(self):
                    return BrokenConnection()

                async def __aexit__(self, *exc):
                    return False
            return Acquired()

        async def expire_connections(self) -> None:
            pass

    store = KeyStore(BrokenPool(), 5)
    with pytest.raises(ServiceUnavailable) as caught:
        await store.authenticate(f"Bearer {generate_key()[0]}")
    assert caught.value.status == 503


async def test_many_new_real_keys_at_once_from_one_client_are_not_throttled(pool):
    """Only lookups that find nothing count against a client: a burst of real keys it has not used
    before, more than its allowance, all authenticate."""
    store = KeyStore(pool, cache_ttl_seconds=60, auth_failures_per_minute=5)
    admin = KeyStore(pool, 0)
    keys = [(await admin.create(name=f"burst-{i}", tier="standard"))[0] for i in range(30)]
    client = FakeRequest("192.0.2.50")
    results = await asyncio.gather(*(store.authenticate(f"Bearer {k}", client) for k in keys), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["ApiKey"] * 30


async def test_a_flood_of_unknown_ids_cannot_evict_real_keys_from_the_cache(counting):
    async with counting:
        store = KeyStore(counting.pool, cache_ttl_seconds=60, max_cache_entries=50)
        full, key = await store.create(name="resident", tier="standard")
        await store.authenticate(f"Bearer {full}")
        before = counting.key_lookups
        for _ in range(200):                       # 4x the cache's size of ids that do not exist
            with pytest.raises(AuthenticationError):
                await store.authenticate(f"Bearer {generate_key()[0]}")
        assert counting.key_lookups == before + 200
        assert (await store.authenticate(f"Bearer {full}")).id == key.id
        assert counting.key_lookups == before + 200      # still cached: no lookup
