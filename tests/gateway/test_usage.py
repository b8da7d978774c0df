"""Usage accounting against the real PostgreSQL (and a throwaway one that goes away)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest_asyncio

from llm_gateway.db import create_pool, migrate
from llm_gateway.keys import KeyStore
from llm_gateway.usage import UsageRecorder, usage_summary
from tests.support.services import ThrowawayPostgres


def stop_postgres(pg: ThrowawayPostgres) -> None:
    pg.crash()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(migrated_database_url):
    pool = await create_pool(migrated_database_url)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def key_id(pool) -> str:
    _, key = await KeyStore(pool, cache_ttl_seconds=0).create(name=f"usage-{uuid.uuid4().hex[:6]}", tier="standard")
    return key.id


def record_n(recorder: UsageRecorder, key_id: str, n: int, *, prefix: str = "req", model: str = "tiny-llama") -> None:
    for i in range(n):
        recorder.record(request_id=f"{prefix}-{key_id}-{i}", key_id=key_id, tier="standard", model=model,
                        prompt_tokens=i % 7, completion_tokens=i % 11, status=200)


async def stored(pool, key_id: str) -> tuple[int, int, int]:
    row = await pool.fetchrow("SELECT count(*) AS n, coalesce(sum(prompt_tokens), 0) AS p,"
                              " coalesce(sum(completion_tokens), 0) AS c FROM usage_records WHERE key_id = $1", key_id)
    return row["n"], row["p"], row["c"]


async def test_close_flushes_everything(pool, key_id):
    # A long interval and a large batch: nothing would be written before close() but for close().
    recorder = UsageRecorder(pool, batch_size=5000, flush_interval_seconds=3600)
    await recorder.start()
    record_n(recorder, key_id, 2000)
    assert recorder.pending == 2000
    assert await stored(pool, key_id) == (0, 0, 0)
    await recorder.close()
    assert recorder.pending == 0
    expected = (2000, sum(i % 7 for i in range(2000)), sum(i % 11 for i in range(2000)))
    assert await stored(pool, key_id) == expected
    ids = await pool.fetch("SELECT DISTINCT request_id FROM usage_records WHERE key_id = $1", key_id)
    assert len(ids) == 2000                          # each exactly once


async def test_batches_are_written_in_the_background(pool, key_id):
    recorder = UsageRecorder(pool, batch_size=100, flush_interval_seconds=0.1)
    await recorder.start()
    try:
        record_n(recorder, key_id, 250)              # two full batches wake the writer, the rest on the timer
        for _ in range(100):
            if (await stored(pool, key_id))[0] == 250:
                break
            await asyncio.sleep(0.05)
        assert (await stored(pool, key_id))[0] == 250
        assert recorder.pending == 0
        row = await pool.fetchrow("SELECT * FROM usage_records WHERE key_id = $1 AND request_id = $2", key_id,
                                  f"req-{key_id}-12")
        assert (row["tier"], row["model"], row["prompt_tokens"], row["completion_tokens"], row["status"]) == (
            "standard", "tiny-llama", 5, 1, 200)
        assert abs((datetime.now(UTC) - row["created_at"]).total_seconds()) < 60
    finally:
        await recorder.close()


async def test_a_bad_record_does_not_block_the_batch(pool, key_id):
    recorder = UsageRecorder(pool, batch_size=50, flush_interval_seconds=3600)
    record_n(recorder, key_id, 20)
    recorder.record(request_id="orphan", key_id="no-such-key-0000", tier="standard", model="m",
                    prompt_tokens=1, completion_tokens=1, status=200)
    record_n(recorder, key_id, 20, prefix="after")
    await recorder.close()
    assert recorder.pending == 0
    assert (await stored(pool, key_id))[0] == 40


def test_record_never_raises_and_is_bounded():
    recorder = UsageRecorder(pool=None, batch_size=10, max_queued=100)
    for i in range(1000):
        recorder.record(request_id=str(i), key_id="k", tier="t", model="m", prompt_tokens=1,
                        completion_tokens=1, status=200)
    assert recorder.pending == 100


async def test_failed_flushes_are_retried_not_dropped(log_dir):
    pg = ThrowawayPostgres(log_dir).start()
    try:
        await migrate(pg.dsn)
        pool = await create_pool(pg.dsn, min_size=0, max_size=2, timeout=2.0, command_timeout=2.0)
        _, key = await KeyStore(pool, cache_ttl_seconds=0).create(name="retry", tier="batch")
        recorder = UsageRecorder(pool, batch_size=100, flush_interval_seconds=0.1)
        await recorder.start()
        record_n(recorder, key.id, 150, prefix="first")
        for _ in range(100):
            if recorder.pending == 0:
                break
            await asyncio.sleep(0.05)
        assert recorder.pending == 0

        stop_postgres(pg)                            # PostgreSQL goes away
        record_n(recorder, key.id, 300, prefix="during")
        await asyncio.sleep(1.0)                     # several failed flush attempts
        assert recorder.pending == 300               # kept, not dropped

        pg.start()                                   # and comes back
        await recorder.close(timeout=30)
        assert recorder.pending == 0
        count = await pool.fetchval("SELECT count(*) FROM usage_records WHERE key_id = $1", key.id)
        assert count == 450
        await pool.close()
    finally:
        pg.destroy()


async def test_usage_summary(pool):
    store = KeyStore(pool, cache_ttl_seconds=0)
    _, a = await store.create(name="sum-a", tier="standard")
    _, b = await store.create(name="sum-b", tier="premium")
    recorder = UsageRecorder(pool)
    for model, n in (("tiny-llama", 3), ("adapter-x", 2)):
        for i in range(n):
            recorder.record(request_id=f"{a.id}-{model}-{i}", key_id=a.id, tier="standard", model=model,
                            prompt_tokens=10, completion_tokens=5, status=200)
    recorder.record(request_id=f"{b.id}-1", key_id=b.id, tier="premium", model="tiny-llama",
                    prompt_tokens=7, completion_tokens=3, status=200)
    await recorder.close()

    rows = await usage_summary(pool, key_id=a.id)
    assert [(r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("adapter-x", 2, 20, 10), ("tiny-llama", 3, 30, 15)]
    everything = {(r["key_id"], r["model"]) for r in await usage_summary(pool)}
    assert {(a.id, "tiny-llama"), (a.id, "adapter-x"), (b.id, "tiny-llama")} <= everything
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await usage_summary(pool, key_id=a.id, since=future) == []


async def test_each_request_is_recorded_once_under_its_own_id(pool, key_id):
    """The record's identity is the gateway's request id, unique; the client's
    X-Request-ID (the same on every request, for a client gaming de-duplication) sits beside it.
    A batch written again after a lost acknowledgement adds nothing."""
    recorder = UsageRecorder(pool, batch_size=10, flush_interval_seconds=3600)
    ids = [f"srv-{key_id}-{i}" for i in range(3)]
    for request_id in ids:
        recorder.record(request_id=request_id, key_id=key_id, tier="standard", model="m", prompt_tokens=5,
                        completion_tokens=1, status=200, client_request_id="constant")
    assert await recorder.flush()
    for request_id in ids[:2]:            # the retry of a batch PostgreSQL had committed
        recorder.record(request_id=request_id, key_id=key_id, tier="standard", model="m", prompt_tokens=5,
                        completion_tokens=1, status=200, client_request_id="constant")
    await recorder.close()
    rows = await pool.fetch("SELECT request_id, client_request_id FROM usage_records WHERE key_id = $1"
                            " ORDER BY request_id", key_id)
    assert [(r["request_id"], r["client_request_id"]) for r in rows] == [(i, "constant") for i in ids]
    unique = await pool.fetchval(
        "SELECT count(*) FROM pg_indexes"
        " WHERE tablename = 'usage_records' AND indexdef LIKE 'CREATE UNIQUE%(request_id)'")
    assert unique == 1
