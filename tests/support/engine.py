"""The real CPU vLLM engine, started once per test session with the dev stack's settings
(scripts/devnode/engine.py: the same code the dev node and the benchmarks use)."""

from __future__ import annotations

from scripts.devnode.engine import (
                                    Engine,
                                    embedding_model_name,
                                    local_engine_spec,
                                    local_engine_spec_for,
                                    served_model_name,
                                    start_engine,
)
from scripts.devnode.paths import ENGINE_PYTHON, TINY_MODEL_DIR

SERVED_MODEL = served_model_name()
EMBED_SERVED_MODEL = embedding_model_name()

__all__ = ["EMBED_SERVED_MODEL", "ENGINE_PYTHON", "SERVED_MODEL", "TINY_MODEL_DIR", "Engine", "local_engine_spec",
           "local_engine_spec_for", "start_engine"]
