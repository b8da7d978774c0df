"""Usage accounting: every request's prompt and completion tokens, written to PostgreSQL in batches.

`record()` only appends to an in-memory queue, so the request path never waits for the
database. A background task copies the queue into usage_records (COPY, in batches) every
`flush_interval_seconds` or as soon as `batch_size` records are waiting. A batch that fails
to write stays queued and is retried; `close()` writes everything before returning, so a
graceful stop loses nothing.

Delivery is at least once: if PostgreSQL commits a batch but the acknowledgement is lost,
the retry writes it again. Billing queries that must be exact can de-duplicate on request_id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime, timezone

import asyncpg

log = logging.getLogger(__name__)

_COLUMNS = ("request_id", "key_id", "tier", "model", "prompt_tokens", "completion_tokens", "status", "created_at")
_RETRY_MAX_SECONDS = 5.0


class UsageRecorder:
    def __init__(self, pool: asyncpg.Pool, batch_size: int = 500, flush_interval_seconds: float = 1.0,
                 max_queued: int = 1_000_000):
        self._pool = pool
        self._batch_size = max(1, batch_size)
        self._interval = flush_interval_seconds
        # Bounded so a very long PostgreSQL outage cannot exhaust memory; beyond it new records
        # are dropped (not old ones: a batch being written is the queue's head) and counted in the log.
        self._queue: deque[tuple] = deque()
        self._max_queued = max_queued
        self._dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        """Records not yet written."""
        return len(self._queue)

    def record(self, *, request_id: str, key_id: str, tier: str, model: str, prompt_tokens: int,
               completion_tokens: int, status: int) -> None:
        """Queue one request's usage. O(1), never blocks, never raises."""
        try:
            if len(self._queue) >= self._max_queued:
                self._dropped += 1
                return
            self._queue.append((request_id, key_id, tier, model, prompt_tokens, completion_tokens, status,
                                time.time()))
            if len(self._queue) == self._batch_size:
                self._wake.set()
        except Exception:  # noqa: BLE001 - accounting must never fail a request
            log.exception("usage: could not queue a record")

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-flusher")

    async def close(self, timeout: float = 30.0) -> None:
        """Stop the background task and write everything queued (retrying for up to `timeout`)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # Not cancelled: a batch cancelled mid-COPY could be written and then written again.
            try:
                await self._task
            except Exception:  # noqa: BLE001
                log.exception("usage: flusher failed")
            self._task = None
        deadline = time.monotonic() + timeout
        delay = 0.1
        while self._queue:
            if await self.flush():
                continue
            if time.monotonic() + delay > deadline:
                log.error("usage: %d records could not be written before shutdown", len(self._queue))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_SECONDS)

    async def _run(self) -> None:
        delay = 0.0   # > 0 while PostgreSQL is failing: back off before the next try
        while not self._closing:
            if delay or len(self._queue) < self._batch_size:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay or self._interval)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            ok = True
            while self._queue and ok and not self._closing:   # drain, one batch at a time
                ok = await self.flush()
            delay = 0.0 if ok else min(max(delay * 2, 0.1), _RETRY_MAX_SECONDS)

    async def flush(self) -> bool:
        """Write one batch; False when the database failed (the batch stays queued)."""
        if self._dropped:
            log.error("usage: dropped %d records (queue full while PostgreSQL was failing)", self._dropped)
            self._dropped = 0
        count = min(len(self._queue), self._batch_size)
        if not count:
            return True
        batch = [self._queue[i] for i in range(count)]
        rows = [(*r[:7], datetime.fromtimestamp(r[7], timezone.utc)) for r in batch]
        try:
            async with self._pool.acquire() as conn:
                try:
                    await conn.copy_records_to_table("usage_records", records=rows, columns=_COLUMNS)
                except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
                    # One bad record (e.g. a key id that does not exist) must not block the rest.
                    await self._write_one_by_one(conn, rows)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("usage: writing %d records failed (%s); will retry", count, type(exc).__name__)
            return False
        for _ in range(count):
            self._queue.popleft()
        return True

    @staticmethod
    async def _write_one_by_one(conn: asyncpg.Connection, rows: list[tuple]) -> None:
        insert = (f"INSERT INTO usage_records ({', '.join(_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        for row in rows:
            try:
                await conn.execute(insert, *row)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                log.error("usage: dropping unwritable record for request %s: %s", row[0], type(exc).__name__)


async def usage_summary(pool: asyncpg.Pool, *, key_id: str | None = None,
                        since: datetime | None = None) -> list[dict]:
    """Token sums per key and model (for `admin usage`)."""
    rows = await pool.fetch(
        "SELECT key_id, model, count(*) AS requests, sum(prompt_tokens) AS prompt_tokens,"
        " sum(completion_tokens) AS completion_tokens FROM usage_records"
        " WHERE ($1::text IS NULL OR key_id = $1) AND ($2::timestamptz IS NULL OR created_at >= $2)"
        " GROUP BY key_id, model ORDER BY key_id, model", key_id, since)
    return [dict(row) for row in rows]
