"""Session-wide real services: PostgreSQL, Redis and the CPU vLLM engine.

vLLM starts once per session (about a minute on these machines). Set
LLM_NODE_TEST_ENGINE_URL to reuse an engine that is already running (it must serve the
same adapters as tests/support/adapters.py builds). The embedding engine (`embed_engine`, the
dev node's "embed" group: tiny-embed) starts only in sessions that ask for it;
LLM_NODE_TEST_EMBED_ENGINE_URL reuses one.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.adapters import build_static_adapters
from tests.support.engine import EMBED_SERVED_MODEL, SERVED_MODEL, Engine, local_engine_spec_for, start_engine
from tests.support.services import ensure_shared_postgres, ensure_shared_redis, shared_postgres_admin_dsn

pytest_plugins = ["tests.support.gateway_fixtures"]


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def static_lora_adapters(tmp_path_factory) -> dict[str, str]:
    return build_static_adapters(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def engine(log_dir, static_lora_adapters) -> Engine:
    external = os.environ.get("LLM_NODE_TEST_ENGINE_URL")
    if external:
        yield Engine(url=external.rstrip("/"), model=SERVED_MODEL)
        return
    started = start_engine(log_dir, static_lora_adapters)
    yield started
    started.proc.stop()


@pytest.fixture(scope="session")
def embed_engine(log_dir) -> Engine:
    """A second CPU vLLM serving an embedding model (vLLM's pooling runner), once per session."""
    external = os.environ.get("LLM_NODE_TEST_EMBED_ENGINE_URL")
    if external:
        yield Engine(url=external.rstrip("/"), model=EMBED_SERVED_MODEL)
        return
    started = start_engine(log_dir, spec=local_engine_spec_for("embed"))
    yield started
    started.proc.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    ensure_shared_redis()
    return os.environ.get("LLM_NODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    ensure_shared_postgres()
    return shared_postgres_admin_dsn()


@pytest.fixture(scope="session")
def database_url(postgres_admin_dsn) -> str:
    """A fresh, empty database for this session on the shared server; dropped afterwards."""
    name = f"llmnode_test_{uuid.uuid4().hex[:10]}"
    subprocess.run(["psql", postgres_admin_dsn, "-qc", f"CREATE DATABASE {name}"], check=True)
    yield postgres_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    subprocess.run(["psql", postgres_admin_dsn, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)
