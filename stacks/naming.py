"""Names and paths inside the node, shared by the configuration and the components.

Services find each other by these network aliases (never by container name, which carries
the stack's prefix), so configs such as prometheus.yml are the same on every stack.
"""

from __future__ import annotations

# Network aliases.
GATEWAY = "gateway"
POSTGRES = "postgres"
REDIS = "redis"
TRAEFIK = "traefik"
CLOUDFLARED = "cloudflared"
PROMETHEUS = "prometheus"
GRAFANA = "grafana"

# Ports inside the containers (never published on the host except Traefik's).
ENGINE_PORT = 8000
GATEWAY_PORT = 8080
GATEWAY_METRICS_PORT = 9101
POSTGRES_PORT = 5432
REDIS_PORT = 6379
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
CLOUDFLARED_METRICS_PORT = 2000

# Mount points.
MODELS_DIR = "/models"  # model volume (or a host directory on dev): weights, HF cache
HF_HOME = f"{MODELS_DIR}/huggingface"  # hub ids resolve from here (engine.model_id)
ADAPTERS_SOURCE_DIR = "/adapters"  # LoRA adapters as uploaded (read-only)
ADAPTERS_SANITIZED_DIR = "/run/llm-node/adapters"  # what the engine entrypoint writes and vLLM loads
SECRETS_DIR = "/run/secrets"  # files uploaded from Pulumi secrets (never in env, never in inspect)


# The engine group a single `engine:` section is (stacks/config.py); its containers keep the
# names a one-model node always had (engine-0, ...), so such a stack updates without replacing them.
DEFAULT_ENGINE_GROUP = "main"


def engine_alias(index: int, group: str = DEFAULT_ENGINE_GROUP) -> str:
    """``engine-<index>`` for the default group, ``engine-<group>-<index>`` for the others."""
    return f"engine-{index}" if group == DEFAULT_ENGINE_GROUP else f"engine-{group}-{index}"


def engine_url(index: int, group: str = DEFAULT_ENGINE_GROUP) -> str:
    return f"http://{engine_alias(index, group)}:{ENGINE_PORT}"
