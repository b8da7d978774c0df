"""A private local node for the benchmarks and the load test.

Built from the local node's building blocks (``scripts/devnode``) and ``services/launch.py``,
so it starts exactly what ``make test`` and ``make dev`` start: the real CPU vLLM (or an
engine you point it at), a ``python -m llm_gateway`` process on free ports, a fresh
PostgreSQL database with the gateway's migrations, and the machine's Redis. Keys are made
with the gateway's own admin CLI. Everything it starts it stops; the database is dropped.

    with LocalNode.start(engine_url=os.environ.get("LLM_NODE_BENCH_ENGINE_URL")) as node:
        key = node.create_key(tier="standard", rpm=600)
        gateway = node.start_gateway()
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from scripts.devnode import gateway as fixtures
from scripts.devnode.engine import Engine, served_model_name, start_engine
from scripts.devnode.local_services import admin_dsn as postgres_admin_dsn
from scripts.devnode.local_services import ensure_redis
from services.launch import gateway_secrets_env

ROOT = Path(__file__).resolve().parents[2]

# Environment variable naming an engine that is already running (skips a ~1 min start).
ENGINE_URL_ENV = "LLM_NODE_BENCH_ENGINE_URL"
# Redis database the benchmarks use on the shared server (never flushed: keys are per node).
BENCH_REDIS_DB = 3


def served_model(engine_url: str) -> str:
    """The base model an engine serves (first of /v1/models without a parent), e.g. on a GPU node."""
    try:
        with urllib.request.urlopen(engine_url + "/v1/models", timeout=10) as response:
            cards = json.load(response)["data"]
    except OSError:
        return served_model_name()  # not reachable (yet): the benchmarks that need it will say so
    base = [card["id"] for card in cards if not card.get("parent")]
    return (base or [served_model_name()])[0]


def engine_url_from_env() -> str | None:
    return os.environ.get(ENGINE_URL_ENV) or os.environ.get("LLM_NODE_TEST_ENGINE_URL") or None


class Gateway(fixtures.Gateway):
    """The test suite's gateway process, plus what the benchmarks read about it."""

    def processes(self) -> list[psutil.Process]:
        """The gateway's supervisor and its workers."""
        parent = psutil.Process(self.proc.pid)
        return [parent, *parent.children(recursive=True)]

    def rss_bytes(self) -> int:
        total = 0
        for process in self.processes():
            with suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total

    def stop(self, timeout: float = 40.0) -> int | None:
        return super().stop(timeout)


@dataclass
class LocalNode:
    engine: Engine
    database_url: str
    redis_url: str
    log_dir: Path
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _cleanup: ExitStack = field(default_factory=ExitStack)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def start(cls, engine_url: str | None = None, log_dir: Path | None = None) -> LocalNode:
        log_dir = Path(log_dir or tempfile.mkdtemp(prefix="llmnode-bench-logs-"))
        cleanup = ExitStack()
        try:
            engine_url = engine_url or engine_url_from_env()
            if engine_url:
                engine = Engine(url=engine_url.rstrip("/"), model=served_model(engine_url.rstrip("/")))
            else:
                print("starting a private CPU vLLM (about a minute) ...", file=sys.stderr, flush=True)
                engine = start_engine(log_dir)
                cleanup.callback(engine.proc.stop)
            ensure_redis()
            admin_dsn = postgres_admin_dsn()
            name = f"llmnode_bench_{uuid.uuid4().hex[:10]}"
            subprocess.run(["psql", admin_dsn, "-qc", f"CREATE DATABASE {name}"], check=True)
            cleanup.callback(subprocess.run, ["psql", admin_dsn, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                             check=False, capture_output=True)
            node = cls(engine=engine, database_url=admin_dsn.rsplit("/", 1)[0] + f"/{name}",
                       redis_url=f"redis://127.0.0.1:6379/{BENCH_REDIS_DB}", log_dir=log_dir, _cleanup=cleanup)
            node.admin("migrate")
            return node
        except BaseException:
            cleanup.close()
            raise

    def close(self) -> None:
        self._cleanup.close()

    def __enter__(self) -> LocalNode:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the gateway -------------------------------------------------------------------------
    def start_gateway(self, engines: list[str] | None = None, **spec_overrides) -> Gateway:
        """A ``python -m llm_gateway`` process on free ports; stopped when the node closes."""
        spec_overrides.setdefault("log_level", "warning")
        started = fixtures.start_gateway(self.log_dir, database_url=self.database_url, redis_url=self.redis_url,
                                         admin_token=self.admin_token, engines=engines or [self.engine.url],
                                         **spec_overrides)
        gateway = Gateway(started.spec, started.proc, started.admin_token, started.database_url, started.redis_url)
        self._cleanup.callback(gateway.stop)
        return gateway

    # -- keys --------------------------------------------------------------------------------
    def admin(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "llm_gateway.admin", *args], cwd=ROOT, capture_output=True,
                                text=True, env=os.environ | gateway_secrets_env({"database_url": self.database_url}))
        if result.returncode != 0:
            raise RuntimeError(f"llm_gateway.admin {' '.join(args)} failed:\n{result.stderr.strip()}")
        return result.stdout

    def create_key(self, tier: str = "standard", name: str | None = None, **limits: int | str) -> str:
        """A real key (``sk-<id>-<secret>``); ``limits``: rpm, tpm, max_concurrent, max_tokens, models."""
        args = ["create-key", "--name", name or f"bench-{tier}-{uuid.uuid4().hex[:6]}", "--tier", tier, "--json"]
        for option, value in limits.items():
            args += [f"--{option.replace('_', '-')}", str(value)]
        return json.loads(self.admin(*args))["key"]


def wait_engine_idle(engine: Engine, timeout: float = 60.0) -> float:
    """Wait until the engine runs no request; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if engine.metric("vllm:num_requests_running") == 0 and engine.metric("vllm:num_requests_waiting") == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - start
