"""A node serving two models: the session's chat engine (tiny-llama) and the embedding engine
(tiny-embed), behind one gateway that knows which engine serves embeddings
(GATEWAY_EMBEDDING_ENGINES)."""

from __future__ import annotations

import pytest

from tests.support.gateway_fixtures import Gateway, start_gateway


@pytest.fixture(scope="session")
def models_gateway(log_dir, migrated_database_url, redis_url, engine, embed_engine) -> Gateway:
    started = start_gateway(log_dir, name="gateway-two-models", engines=[engine.url],
                            embedding_engines=[embed_engine.url], key_cache_ttl_seconds=1.0,
                            shutdown_grace_seconds=10.0, database_url=migrated_database_url, redis_url=redis_url)
    yield started
    started.stop()
