"""Chaos: a swarm of clients against a gateway whose Redis, PostgreSQL and engine are killed
and restarted, one after the other. A benchmark (figures to read), not a test.

Everything it kills is its own: a throwaway Redis and PostgreSQL (scripts/devnode/throwaway.py)
and a fast stand-in engine (fast_upstream.py) on free ports -- never the machine's shared
services. The gateway runs with its defaults (limiter fail-closed, key cache TTL 5 s, two
workers) plus the throwaway URLs.

For each dependency: `--before` seconds of traffic, the dependency killed (SIGKILL, so
connections die as in a crash) for `--outage` seconds, restarted on the same port, then
`--after` seconds. "back" is the moment the restarted dependency accepts connections
(PostgreSQL: answers a query). Printed per dependency:
- status counts of the requests sent before the kill, during the outage, and after "back";
- first success: when the first request sent after "back" succeeded, from "back";
- last failure: when the last failed request sent after "back" ended, from "back";
- other 5xx: answers >= 500 other than 503, by status, for requests in flight at the kill and
  sent after it. Must be none -- requests the engine was answering when it was killed get a
  503 `engine_unavailable` with Retry-After too (the engine dropped them: retry). The exit
  status is 1 otherwise.

What each phase's clients send:
- redis: every request uses one key with limits (rpm, tpm, max_concurrent), so each one
  needs the limiter;
- postgres: every request uses a key never used before (made up front), so each one needs a
  PostgreSQL lookup ("new keys"); a known key would be served from its cached entry;
- engine: one unlimited key, cached.

    .venv/bin/python -m scripts.bench.chaos [--clients 100] [--outage 8] [--only redis,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from llm_gateway.db import migrate
from llm_gateway.keys import generate_key, hash_secret
from scripts.devnode.gateway import start_gateway
from scripts.devnode.processes import ManagedProcess, free_port, http_ok, port_open
from scripts.devnode.throwaway import ThrowawayPostgres, ThrowawayRedis

from .localnode import ROOT
from .report import print_table

MODEL = "tiny-llama"            # what fast_upstream serves
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class Sample:
    sent: float
    done: float
    status: int                 # 0: no HTTP answer (connection error, client timeout)
    code: str = ""              # the OpenAI error code of a non-200 answer


@dataclass
class Phase:
    name: str
    killed: float = 0.0
    back: float = 0.0
    samples: list[Sample] = field(default_factory=list)


class Keys:
    """Keys made straight in the throwaway database (COPY), so thousands cost a second."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    async def make(self, count: int, **limits) -> list[str]:
        rows, keys = [], []
        for _ in range(count):
            full, key_id, secret = generate_key()
            keys.append(full)
            rows.append((key_id, hash_secret(secret), "chaos", "standard", [], limits.get("rpm"), limits.get("tpm"),
                         limits.get("max_concurrent")))
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.copy_records_to_table("api_keys", records=rows, columns=(
                "id", "secret_hash", "name", "tier", "models", "rpm", "tpm", "max_concurrent"))
        finally:
            await conn.close()
        return keys


async def swarm(url: str, clients: int, key_for, stop: asyncio.Event, samples: list[Sample]) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def client() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    async with session.post(url + "/v1/chat/completions", json=BODY,
                                            headers={"Authorization": f"Bearer {key_for()}"}) as response:
                        payload = await response.read()
                        status = response.status
                    code = "" if status == 200 else _code(payload)
                except (TimeoutError, aiohttp.ClientError):
                    status, code = 0, "no answer"
                samples.append(Sample(sent, time.monotonic(), status, code))
                if status != 200:
                    await asyncio.sleep(0.05)   # as a client honouring a short back-off would
        await asyncio.gather(*(client() for _ in range(clients)))


def _code(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def wait_postgres(dsn: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await (await asyncpg.connect(dsn, timeout=2)).close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


async def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} did not open")
        await asyncio.sleep(0.01)


def report(phase: Phase) -> list:
    before = Counter(s.status for s in phase.samples if s.sent < phase.killed)
    during = Counter(s.status for s in phase.samples if phase.killed <= s.sent < phase.back)
    after = [s for s in phase.samples if s.sent >= phase.back]
    first_ok = min((s.done for s in after if s.status == 200), default=None)
    last_fail = max((s.done for s in after if s.status != 200), default=None)
    other = Counter(("in flight" if s.sent < phase.killed else "after kill", s.status)
                    for s in phase.samples if s.status >= 500 and s.status != 503)
    other_5xx = " ".join(f"{status}:{n} ({when})" for (when, status), n in sorted(other.items())) or "0"

    def counts(c: Counter) -> str:
        return " ".join(f"{status or 'conn'}:{n}" for status, n in sorted(c.items())) or "-"

    return [phase.name, counts(before), counts(during), counts(Counter(s.status for s in after)),
            f"{first_ok - phase.back:.2f} s" if first_ok is not None else "never",
            f"{last_fail - phase.back:.2f} s" if last_fail is not None else "none", other_5xx]


async def run(args) -> list[Phase]:
    log_dir = Path(tempfile.mkdtemp(prefix="llmnode-chaos-"))
    redis = ThrowawayRedis(log_dir).start()
    pg = ThrowawayPostgres(log_dir).start()
    upstream_port = free_port()
    upstream_argv = [sys.executable, "-m", "scripts.bench.fast_upstream", "--port", str(upstream_port)]
    upstream = None
    gateway = None
    phases: list[Phase] = []
    try:
        await wait_postgres(pg.dsn)
        await migrate(pg.dsn)
        upstream = ManagedProcess(f"chaos-upstream-{upstream_port}", upstream_argv, log_dir, cwd=ROOT)
        upstream.wait_until(lambda: http_ok(f"http://127.0.0.1:{upstream_port}/health"), 30, "ready")
        gateway = start_gateway(log_dir, database_url=pg.dsn, redis_url=redis.url, admin_token=None,
                                engines=[f"http://127.0.0.1:{upstream_port}"], workers=args.workers,
                                log_level="warning", name="chaos-gateway")
        keys = Keys(pg.dsn)
        limited = (await keys.make(1, rpm=10_000_000, tpm=2_000_000_000, max_concurrent=10_000))[0]
        unlimited = (await keys.make(1))[0]
        seconds = args.before + args.outage + args.after
        new_keys = await keys.make(args.new_keys)
        used = 0

        def fresh() -> str:
            nonlocal used
            used += 1
            # Ran out: a key used again is cached and would make the phase's figures mislead;
            # the phase is refused after it ends (an exception here would only kill one client).
            return new_keys[min(used, len(new_keys)) - 1]

        async def phase(name: str, key_for, kill, restart, wait_back) -> Phase:
            result = Phase(name)
            stop = asyncio.Event()
            task = asyncio.create_task(swarm(gateway.url, args.clients, key_for, stop, result.samples))
            await asyncio.sleep(args.before)
            result.killed = time.monotonic()
            await asyncio.to_thread(kill)
            await asyncio.sleep(args.outage)
            # Started in a thread (ThrowawayRedis/Postgres.start poll for the port every 0.25 s);
            # "back" is seen by our own finer poll.
            restarting = asyncio.create_task(asyncio.to_thread(restart))
            await wait_back()
            result.back = time.monotonic()
            await restarting
            await asyncio.sleep(args.after)
            stop.set()
            await task
            return result

        def kill_redis() -> None:
            redis.proc.signal(signal.SIGKILL)
            redis.stop()

        def kill_postgres() -> None:
            pg.proc.signal(signal.SIGKILL)      # the process group: postmaster and backends
            pg.stop()

        def restart_upstream() -> None:
            nonlocal upstream
            upstream = ManagedProcess(f"chaos-upstream-{upstream_port}", upstream_argv, log_dir, cwd=ROOT)

        def kill_upstream() -> None:
            upstream.signal(signal.SIGKILL)
            upstream.stop()

        plan = {
            "redis": (lambda: limited, kill_redis, lambda: redis.start(), lambda: wait_port(redis.port)),
            "postgres": (fresh, kill_postgres, lambda: pg.start(), lambda: wait_postgres(pg.dsn)),
            "engine": (lambda: unlimited, kill_upstream, restart_upstream, lambda: wait_port(upstream_port)),
        }
        for name in args.only.split(","):
            print(f"  {name}: {args.before:g} s of traffic, killed for {args.outage:g} s, {args.after:g} s after "
                  f"({seconds:g} s) ...", file=sys.stderr, flush=True)
            phases.append(await phase(name, *plan[name]))
            if name == "postgres" and used > len(new_keys):
                raise SystemExit(f"chaos: the postgres phase sent {used} requests but only --new-keys "
                                 f"{len(new_keys)} keys were made; run again with more")
            await asyncio.sleep(1.0)
    finally:
        if gateway is not None:
            gateway.stop()
        if upstream is not None:
            upstream.stop()
        redis.stop()
        pg.destroy()
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--outage", type=float, default=8.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--new-keys", type=int, default=80_000,
                        help="keys made for the postgres phase (one per request)")
    parser.add_argument("--only", default="redis,postgres,engine")
    args = parser.parse_args(argv)
    phases = asyncio.run(run(args))
    rows = [report(p) for p in phases]
    notes = []
    for p in phases:
        codes = Counter((s.status, s.code) for s in p.samples if s.status != 200)
        notes.append(f"{p.name} errors by code: "
                     + ", ".join(f"{st} {code}: {n}" for (st, code), n in sorted(codes.items())))
    print_table(f"Chaos: {args.clients} concurrent clients, each dependency killed (SIGKILL) for {args.outage:g} s",
                ["dependency", "before", "during", "after back", "first success", "last failure", "other 5xx"],
                rows,
                ["status counts of requests sent in each period (conn: no HTTP answer); 'back' = the restarted "
                 "dependency accepts connections; first success / last failure are from 'back'",
                 "redis: a key with limits, fail-closed; postgres: a never-used key per request; engine: a cached "
                 "unlimited key; gateway defaults otherwise, fast stand-in engine", *notes])
    # Every failure an outage causes is a 503 with Retry-After -- requests the engine was
    # answering when it was killed included (it dropped them: retry). Any other 5xx is a fault.
    faults = [p.name for p in phases if any(s.status >= 500 and s.status != 503 for s in p.samples)]
    if faults:
        print(f"FAULT: 5xx other than 503 in: {', '.join(faults)}")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
