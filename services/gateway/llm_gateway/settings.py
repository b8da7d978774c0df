"""The gateway's settings: the one schema every other copy is generated from.

``Options`` holds every non-secret setting (type, bounds, default, description); ``Settings``
adds the three secrets and reads all of it once from the environment (prefix GATEWAY_). The
rest of the node derives from these classes instead of repeating them:

  * services/launch.py ``gateway_env`` writes ``Options`` as environment (``to_env`` below), the
    Pulumi program (stacks/gateway.py, stacks/kubernetes/) and the local processes
    (scripts/devnode) both use it;
  * stacks/config.py validates the stack's ``llm-node:gateway:`` section with ``Options``
    (every field but ``DEPLOYMENT_FIELDS``);
  * scripts/config_docs.py writes the gateway table of docs/configuration.md from the
    descriptions and defaults.

Secrets may also come as files: with GATEWAY_SECRETS_DIR set, pydantic-settings reads
``<dir>/gateway_database_url`` and so on (``secret_file_name``; a container gets its secrets
this way: `docker inspect` shows env, never files). An environment variable wins over a file.

This module needs only pydantic and pydantic-settings (the Pulumi program imports it).
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GATEWAY_"
# The directory the secret files are read from (pydantic-settings' secrets_dir).
SECRETS_DIR_ENV = "GATEWAY_SECRETS_DIR"


class Options(BaseModel):
    """Every non-secret gateway setting, typed and bounded (a value: nothing is read from env)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engines: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000"], min_length=1,
        description="Base URLs of the vLLM servers the gateway balances over (comma-separated in env).")
    embedding_engines: list[str] = Field(
        default_factory=list,
        description="Base URLs of the engines serving embedding models (vLLM's pooling runner; comma-separated "
                    "in env): they answer `/v1/embeddings` only, never the completion routes or LoRA admin calls. "
                    "vLLM's model cards do not say which runner serves a model, so this list does.")
    host: str = Field(default="0.0.0.0", description="Address the API and metrics listeners bind to.")
    port: int = Field(default=8080, ge=1, le=65535, description="API port.")
    metrics_port: int = Field(default=9101, ge=1, le=65535,
                              description="Port of `/metrics` (same host; Traefik never routes it).")
    workers: int = Field(default=2, ge=1, description="Server worker processes sharing the API port.")
    key_cache_ttl_seconds: float = Field(
        default=5.0, ge=0,
        description="How long an authenticated key is cached before PostgreSQL is asked again: a revocation "
                    "takes effect within it.")
    key_cache_stale_if_error_seconds: float = Field(
        default=900.0, ge=0,
        description="While PostgreSQL is unreachable, a key seen before keeps being served from its last known "
                    "answer for up to this long past its TTL (0: never); ids never seen get 503. Revocations apply "
                    "as soon as PostgreSQL answers again.")
    key_lookup_timeout_seconds: float = Field(
        default=2.0, gt=0,
        description="Longest wait for a PostgreSQL connection (or, for a key never seen, a lookup slot: such "
                    "lookups use at most half the pool) when a key is not cached; then 503 with `Retry-After`.")
    auth_failures_per_minute: int = Field(
        default=60, ge=1,
        description="Key lookups finding nothing (unknown id, wrong secret) one client address may cause per "
                    "minute (the last `X-Forwarded-For` entry, else the peer); beyond it, ids not in the cache "
                    "get 429 without reaching PostgreSQL (cached keys keep working).")
    limiter_failure_mode: Literal["closed", "local"] = Field(
        default="closed",
        description="When Redis is unreachable: `closed` rejects (503), `local` falls back to per-process "
                    "limits. Unreachable: a connection refused or reset, or two 3 s call timeouts in a row; one "
                    "request per worker probes again after 0.1 s, doubling to 0.4 s, recovery is automatic.")
    max_body_bytes: int = Field(
        default=1_048_576, gt=0,
        description="Largest request body (413 above it). Also the edge limit with `edge.body_limit: edge`.")
    max_in_flight: int = Field(
        default=512, gt=0,
        description="Requests in flight per worker process; beyond it a request waits "
                    "`admission_wait_seconds`, then gets 503 with `Retry-After`.")
    admission_wait_seconds: float = Field(default=0.5, ge=0,
                                          description="How long a request may wait for an in-flight slot.")
    request_timeout_seconds: float = Field(
        default=600.0, gt=0,
        description="Longest an engine may keep a request waiting: for its answer, or between two reads of a "
                    "stream (time blocked on a slow client is not counted); then 504 or an error event.")
    # Bounds on what one request may make the gateway hold (validation.py, proxy.py).
    max_n: int = Field(default=16, ge=1,
                       description="Largest `n` (choices per prompt) a request may ask for (400 above it).")
    max_buffered_response_bytes: int = Field(
        default=16_777_216, gt=0,
        description="Largest non-streaming answer the gateway holds to relay (502 `response_too_large` above "
                    "it; streams are relayed as they come and are not bounded).")
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0,
        description="Drain time on SIGTERM; the container's stop timeout is this plus 5 s.")
    # vLLM's priority scheduler serves lower numbers first.
    tier_priorities: dict[str, int] = Field(
        default_factory=lambda: {"premium": 0, "standard": 10, "batch": 20},
        description="vLLM priority per key tier (lower is served first; JSON in env). Unknown tiers get the "
                    "largest value; `{}` sends no priority.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="Log level of the JSON logs (`debug` adds health/readiness access lines).")
    # Engine pool (engines.py, breaker.py, catalog.py).
    health_check_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often the gateway probes each engine's `/health`.")
    circuit_failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive upstream failures that open an engine's circuit breaker.")
    circuit_open_seconds: float = Field(
        default=5.0, gt=0, description="How long a breaker stays open before a trial request.")
    model_refresh_seconds: float = Field(
        default=30.0, gt=0,
        description="How often the gateway refreshes the engines' model lists (adapters loaded at runtime).")
    # aiohttp's DNS cache: on Kubernetes the engines are per-pod DNS names whose address changes
    # when a pod is replaced, so it must stay short there.
    engine_dns_ttl_seconds: int = Field(
        default=300, ge=0,
        description="How long the gateway caches an engine host name's addresses (at most 30 on "
                    "`target: kubernetes`, where engines are per-pod DNS names).")

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes``, validated again (pydantic's model_copy does not validate)."""
        return type(self).model_validate(self.model_dump() | changes)


# Set by the node's wiring (engine locations, listeners), never by a stack file.
DEPLOYMENT_FIELDS = frozenset({"engines", "embedding_engines", "host", "port", "metrics_port"})


class Settings(Options, BaseSettings):
    """What the running gateway reads: ``Options`` plus the secrets, from env (and secret files)."""

    # No JSON decoding by the source: ``_decode_env`` below reads list and dict fields.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=False, enable_decoding=False,
                                      secrets_dir=os.environ.get(SECRETS_DIR_ENV) or None)

    # Secrets (never logged: SecretStr hides them in repr).
    database_url: SecretStr = Field(default=SecretStr("postgresql://postgres@127.0.0.1:5432/llmnode"),
                                    description="PostgreSQL URL: API keys and usage records (asyncpg).")
    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"),
                                 description="Redis URL: rate limits and concurrency leases.")
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of the admin routes (LoRA load/unload); unset: they answer 404.")

    @field_validator("*", mode="before")
    @classmethod
    def _decode_env(cls, value: object, info: ValidationInfo) -> object:
        """Environment text: list fields are comma-separated, dict fields JSON (``to_env`` writes them)."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        kind = typing.get_origin(cls.model_fields[info.field_name].annotation)
        if kind is list:
            return [item.strip() for item in value.split(",") if item.strip()]
        if kind is dict:
            return json.loads(value)
        return value

    @field_validator("engines", "embedding_engines")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        return [url.rstrip("/") for url in value]


# The secrets are the SecretStr fields (the gateway never logs them; containers get them as files).
SECRET_FIELDS = tuple(name for name, field in Settings.model_fields.items()
                      if SecretStr in (field.annotation, *typing.get_args(field.annotation)))


def env_name(field: str) -> str:
    """The environment variable of a setting (``workers`` -> ``GATEWAY_WORKERS``)."""
    if field not in Settings.model_fields:
        raise KeyError(f"{field!r} is not a gateway setting")
    return ENV_PREFIX + field.upper()


def secret_file_name(field: str) -> str:
    """The file name of a secret setting inside GATEWAY_SECRETS_DIR (how pydantic-settings looks it up)."""
    if field not in SECRET_FIELDS:
        raise KeyError(f"{field!r} is not a secret gateway setting")
    return env_name(field).lower()


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        if any("," in str(item) for item in value):
            raise ValueError(f"{value!r}: a list item with a comma cannot be written comma-separated")
        return ",".join(str(item) for item in value)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return str(value)


def to_env(options: Options) -> dict[str, str]:
    """Every non-secret setting as the environment ``Settings`` reads back to the same values."""
    env = {}
    for name in Options.model_fields:
        value = getattr(options, name)
        if value is not None:  # None: the variable is left out, so the (None) default applies
            env[env_name(name)] = _env_text(value)
    return env


def secrets_env(secrets: Mapping[str, str | None]) -> dict[str, str]:
    """Secret settings (by field name) as environment, for local processes (containers use files)."""
    unknown = set(secrets) - set(SECRET_FIELDS)
    if unknown:
        raise KeyError(f"not secret gateway settings: {sorted(unknown)}")
    return {env_name(name): value for name, value in secrets.items() if value}
