"""Engine health probes (engines.py): a refused connection marks an engine down at once; a
busy engine that misses one probe keeps serving until it misses SLOW_PROBES_TO_DOWN in a row."""

from __future__ import annotations

import aiohttp

from llm_gateway.engines import SLOW_PROBES_TO_DOWN, EnginePool
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.procs import free_port


def _pool(urls: list[str], session: aiohttp.ClientSession) -> EnginePool:
    return EnginePool(urls, session, failure_threshold=3, open_seconds=5, health_interval=1, health_timeout=1)


async def test_one_failed_probe_is_tolerated_consecutive_failures_are_not():
    upstream = FlakyUpstream().start()
    try:
        async with aiohttp.ClientSession() as session:
            pool = _pool([upstream.url], session)
            assert [e.url for e in await pool.check_health()] == [upstream.url]   # came up
            engine = pool.engines[0]

            upstream.healthy = False                   # /health answers 503
            for _ in range(SLOW_PROBES_TO_DOWN - 1):
                await pool.check_health()
                assert engine.healthy, "one missed probe must not take a serving engine out"
            await pool.check_health()
            assert not engine.healthy
            assert pool.healthy() == []

            upstream.healthy = True
            assert await pool.check_health() == [engine]   # back after one good probe
            assert engine.healthy and engine.failed_probes == 0
    finally:
        upstream.stop()


async def test_refused_connection_marks_the_engine_down_at_once():
    upstream = FlakyUpstream().start()
    dead = f"http://127.0.0.1:{free_port()}"       # nothing listens there
    try:
        async with aiohttp.ClientSession() as session:
            pool = _pool([upstream.url, dead], session)
            await pool.check_health()
            healthy = {e.url: e.healthy for e in pool.engines}
            assert healthy == {upstream.url: True, dead: False}
            upstream.stop()                          # now refused too
            await pool.check_health()
            assert pool.healthy() == []
    finally:
        upstream.stop()
