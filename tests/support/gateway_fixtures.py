"""Gateway fixtures (a pytest plugin registered in tests/conftest.py).

    migrated_database_url   session database with the gateway's migrations applied
    make_key(**fields)      -> "sk-..." a new API key in that database
                            fields: tier="standard", models=(), rpm, tpm, max_concurrent,
                            max_tokens, expires_at (datetime), name
    gateway                 session gateway: real `python -m llm_gateway` (2 workers) in front
                            of the session `engine`, shared Redis, admin token ADMIN_TOKEN,
                            key cache TTL 2 s, model list refreshed every 5 s
    gateway_factory(**kw)   -> Gateway: a private gateway for one test, stopped at its end.
                            kw: any services.launch.GatewaySpec field (engines default to
                            [engine.url], workers default to 1, key cache TTL to 1 s), plus
                            database_url / redis_url / admin_token, and wait_ready=False to
                            return once /healthz answers (for gateways that cannot be ready).

A Gateway has .url, .metrics_url, .admin_token, .spec, .metric(name, **labels), .log_tail(),
.signal(sig) and .stop(). Gateways run from the same launch code as the node
(services/launch.py: gateway_env, gateway_process_argv) on free ports.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import time
from collections.abc import Iterable
from datetime import datetime

import pytest
import pytest_asyncio
import redis

from llm_gateway.limiter_scripts import limiter_keys
from scripts.devnode.gateway import ADMIN_TOKEN, Gateway, start_gateway

__all__ = ["ADMIN_TOKEN", "Gateway", "key_id_of", "start_gateway"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def migrated_database_url(database_url) -> str:
    """The session database with the gateway's migrations applied (llm_gateway.db.migrate)."""
    from llm_gateway.db import migrate

    await migrate(database_url)
    return database_url


# -- keys ------------------------------------------------------------------------------------------

def key_id_of(key: str) -> str:
    """The public id of a key "sk-<id>-<secret>"."""
    return key.split("-")[1]


def wait_until_settled(gateway: Gateway, key: str, timeout: float = 5.0) -> None:
    """Until the key's concurrency lease is gone: its last request's books are closed (the
    reservation reconciled), which happens just after the answer left."""
    client = redis.Redis.from_url(gateway.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while client.zcard(limiter_keys(key_id_of(key)).leases):
            assert time.monotonic() < deadline, "the request's books were never closed"
            time.sleep(0.005)
    finally:
        client.close()


async def _create_key(dsn: str, fields: dict) -> str:
    from llm_gateway.db import create_pool
    from llm_gateway.keys import KeyStore

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        key, _record = await KeyStore(pool, 0).create(**fields)
        return key
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def make_key(migrated_database_url):
    """make_key(tier="standard", models=(), rpm=None, tpm=None, max_concurrent=None, max_tokens=None,
    expires_at=None, name=None) -> the full key. Callable from sync and async tests alike (it runs
    on its own thread and event loop)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="make-key")

    def make(*, tier: str = "standard", models: Iterable[str] = (), rpm: int | None = None,
             tpm: int | None = None, max_concurrent: int | None = None, max_tokens: int | None = None,
             expires_at: datetime | None = None, name: str | None = None) -> str:
        fields = dict(name=name or f"test-{secrets.token_hex(3)}", tier=tier, models=list(models), rpm=rpm,
                      tpm=tpm, max_concurrent=max_concurrent, max_tokens=max_tokens, expires_at=expires_at)
        return pool.submit(asyncio.run, _create_key(migrated_database_url, fields)).result(timeout=30)

    yield make
    pool.shutdown()


# -- gateways --------------------------------------------------------------------------------------

@pytest.fixture
def gateway_factory(log_dir, migrated_database_url, redis_url, engine):
    started: list[Gateway] = []

    def factory(**kw) -> Gateway:
        kw.setdefault("engines", [engine.url])
        kw.setdefault("workers", 1)
        kw.setdefault("key_cache_ttl_seconds", 1.0)
        kw.setdefault("shutdown_grace_seconds", 10.0)
        kw.setdefault("database_url", migrated_database_url)
        kw.setdefault("redis_url", redis_url)
        gateway = start_gateway(log_dir, **kw)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def gateway(log_dir, migrated_database_url, redis_url, engine) -> Gateway:
    started = start_gateway(log_dir, name="gateway-session", engines=[engine.url], key_cache_ttl_seconds=2.0,
                            model_refresh_seconds=5.0, shutdown_grace_seconds=10.0,
                            database_url=migrated_database_url, redis_url=redis_url)
    yield started
    started.stop()
