"""The local dev node: one CPU vLLM per engine group + the gateway as background processes,
state under .dev/.

The engine argv and the gateway env come from services/launch.py, fed with the `dev`
stack's configuration (stacks/Pulumi.dev.yaml via stacks/config.py) — the same code the
Pulumi program uses — with only local paths and ports replaced.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.launch import (
    EngineSpec,
    GatewaySpec,
    engine_env,
    engine_process_argv,
    gateway_process_argv,
    gateway_secrets_env,
)

from .engine import local_group_specs
from .gateway import process_env as gateway_process_env
from .local_services import ensure_database, ensure_postgres, ensure_redis
from .paths import ENGINE_PYTHON
from .processes import DetachedProcess, http_ok

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("LLM_NODE_DEV_DIR", ROOT / ".dev"))
PROJECT_PYTHON = sys.executable


@dataclass(frozen=True)
class DevPorts:
    engine: int = int(os.environ.get("LLM_NODE_DEV_ENGINE_PORT", 8000))  # the first group's; group i: engine + i
    gateway: int = int(os.environ.get("LLM_NODE_DEV_GATEWAY_PORT", 8080))
    metrics: int = int(os.environ.get("LLM_NODE_DEV_METRICS_PORT", 9101))


def dev_specs(ports: DevPorts) -> tuple[dict[str, EngineSpec], GatewaySpec]:
    """The dev stack's engine groups (name -> spec) and gateway spec, re-pointed at local paths and ports."""
    from stacks.config import load_stack_specs

    _, gateway = load_stack_specs("dev")
    engines = local_group_specs(ports.engine)
    urls = {kind: [f"http://127.0.0.1:{spec.port}" for spec in engines.values() if spec.kind == kind]
            for kind in ("generate", "embed")}
    gateway = gateway.replace(engines=urls["generate"], embedding_engines=urls["embed"],
                              host="127.0.0.1", port=ports.gateway, metrics_port=ports.metrics)
    return engines, gateway


def _engine_process(group: str) -> DetachedProcess:
    return _process(f"engine-{group}")


def _groups() -> list[str]:
    from stacks.config import load_engine_specs

    return list(load_engine_specs("dev"))


def _process(name: str) -> DetachedProcess:
    return DetachedProcess(name, STATE)


def _secret(name: str) -> str:
    """A generated secret kept in .dev/ (mode 600), stable across restarts."""
    path = STATE / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _admin(args: list[str], database_url: str) -> str:
    result = subprocess.run([PROJECT_PYTHON, "-m", "llm_gateway.admin", *args], cwd=ROOT, capture_output=True,
                            text=True, env=os.environ | gateway_secrets_env({"database_url": database_url}))
    if result.returncode != 0:
        raise RuntimeError(f"llm_gateway.admin {args[0]} failed:\n{result.stderr.strip()}")
    return result.stdout


def start(ports: DevPorts = DevPorts()) -> dict[str, str]:
    STATE.mkdir(parents=True, exist_ok=True)
    engine_specs, gateway_spec = dev_specs(ports)
    admin_dsn = os.environ.get("LLM_NODE_PG_ADMIN_DSN") or ensure_postgres()
    database_url = ensure_database(admin_dsn, "llmnode_dev")
    redis_url = ensure_redis() + "/1"

    gateway = _process("gateway")
    external_engine = os.environ.get("LLM_NODE_DEV_ENGINE_URL")  # reuse running engines (tests do)
    if external_engine:
        external_embedding = os.environ.get("LLM_NODE_DEV_EMBEDDING_ENGINE_URL")
        gateway_spec = gateway_spec.replace(engines=[external_engine.rstrip("/")],
                                            embedding_engines=[external_embedding.rstrip("/")] if external_embedding
                                            else [])
    else:
        # Start every group first, then wait: the models load side by side.
        for group, spec in engine_specs.items():
            engine = _engine_process(group)
            if engine.pid() is None:
                print(f"starting vLLM (CPU) group {group} ({spec.kind}, {spec.served_model_name}) on "
                      f"127.0.0.1:{spec.port}; first start takes about a minute ...", flush=True)
                engine.start(engine_process_argv(spec, str(ENGINE_PYTHON)), engine_env(spec), ROOT)
        for group, spec in engine_specs.items():
            _engine_process(group).wait_until(lambda port=spec.port: http_ok(f"http://127.0.0.1:{port}/health"),
                                              600, "healthy")

    _admin(["migrate"], database_url)
    if gateway.pid() is None:
        env = gateway_process_env(gateway_spec, database_url=database_url, redis_url=redis_url,
                                  admin_token=_secret("admin-token"))
        gateway.start(gateway_process_argv(PROJECT_PYTHON), env, ROOT)
    gateway.wait_until(lambda: http_ok(f"http://127.0.0.1:{ports.gateway}/readyz"), 120, "ready")

    env_file = STATE / "env"
    key = _existing_key(env_file) or json.loads(_admin(
        ["create-key", "--name", "dev", "--tier", "standard", "--json"], database_url))["key"]
    base_url = f"http://127.0.0.1:{ports.gateway}/v1"
    env_file.write_text(f"export OPENAI_BASE_URL={base_url}\nexport OPENAI_API_KEY={key}\n")
    env_file.chmod(0o600)
    def first(kind: str) -> str:
        return next((spec.served_model_name for spec in engine_specs.values() if spec.kind == kind), "")

    return {"base_url": base_url, "key": key, "model": first("generate"), "embedding_model": first("embed"),
            "env_file": str(env_file), "database_url": database_url}


def _existing_key(env_file: Path) -> str | None:
    """Reuse the key from a previous start while it still authenticates."""
    if not env_file.exists():
        return None
    values = dict(line.removeprefix("export ").split("=", 1)
                  for line in env_file.read_text().splitlines() if "=" in line)
    key, base = values.get("OPENAI_API_KEY"), values.get("OPENAI_BASE_URL")
    if not key or not base:
        return None
    request = urllib.request.Request(base + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return key if response.status == 200 else None
    except Exception:  # noqa: BLE001 - any failure means the saved key is no longer good
        return None


def _names() -> list[str]:
    return [f"engine-{group}" for group in _groups()] + ["gateway"]


def stop() -> list[str]:
    # Gateway first, so in-flight requests drain while the engines still answer.
    return [name for name in reversed(_names()) if _process(name).stop()]


def status() -> dict[str, int | None]:
    return {name: _process(name).pid() for name in _names()}
