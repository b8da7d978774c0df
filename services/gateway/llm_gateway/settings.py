"""Typed gateway settings, read once from the environment (prefix GATEWAY_).

services/launch.py:gateway_env() writes these names; keep the two in step. Secrets may also
come as files: with GATEWAY_SECRETS_DIR set, pydantic-settings reads ``<dir>/gateway_database_url``
and so on (a container gets its secrets this way: `docker inspect` shows env, never files).
An environment variable wins over a file.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore",
                                      secrets_dir=os.environ.get("GATEWAY_SECRETS_DIR") or None)

    # Secrets (never logged: SecretStr hides them in repr).
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/llmnode")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    admin_token: SecretStr | None = None

    engines: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["http://127.0.0.1:8000"])
    # Engines serving embedding models (vLLM's pooling runner): they answer /v1/embeddings only.
    # Part of the pool whether or not `engines` lists them too.
    embedding_engines: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 9101
    workers: int = Field(default=2, ge=1)
    key_cache_ttl_seconds: float = Field(default=5.0, ge=0)
    key_cache_stale_if_error_seconds: float = Field(default=900.0, ge=0)
    key_lookup_timeout_seconds: float = Field(default=2.0, gt=0)
    auth_failures_per_minute: int = Field(default=60, ge=1)
    limiter_failure_mode: Literal["closed", "local"] = "closed"
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_in_flight: int = Field(default=512, gt=0)
    admission_wait_seconds: float = Field(default=0.5, ge=0)
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    # Bounds on what one request may make the gateway hold (validation.py, proxy.py).
    max_n: int = Field(default=16, ge=1)
    max_buffered_response_bytes: int = Field(default=16_777_216, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    tier_priorities: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: {"premium": 0, "standard": 10, "batch": 20}
    )
    log_level: str = "info"
    # Engine pool (engines.py, breaker.py, catalog.py).
    health_check_interval_seconds: float = Field(default=2.0, gt=0)
    circuit_failure_threshold: int = Field(default=3, ge=1)
    circuit_open_seconds: float = Field(default=5.0, gt=0)
    model_refresh_seconds: float = Field(default=30.0, gt=0)
    # How long an engine host name's addresses are cached (aiohttp's DNS cache). On Kubernetes the
    # engines are per-pod DNS names whose address changes when a pod is replaced: keep it short there.
    engine_dns_ttl_seconds: int = Field(default=300, ge=0)

    @field_validator("engines", "embedding_engines", mode="before")
    @classmethod
    def _split_engines(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        return value

    @field_validator("tier_priorities", mode="before")
    @classmethod
    def _parse_priorities(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value
