"""The local dev node: CPU vLLM + gateway as background processes, state under .dev/.

The engine argv and the gateway env come from services/launch.py, fed with the `dev`
stack's configuration (stacks/Pulumi.dev.yaml via stacks/config.py) — the same code the
Pulumi program uses — with only local paths and ports replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.launch import (
    GATEWAY_SECRET_ENV,
    EngineSpec,
    GatewaySpec,
    engine_env,
    engine_process_argv,
    gateway_env,
    gateway_process_argv,
)

from .engine import local_engine_spec
from .local_services import ensure_database, ensure_postgres, ensure_redis
from .paths import ENGINE_PYTHON
from .processes import DetachedProcess, http_ok

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("LLM_NODE_DEV_DIR", ROOT / ".dev"))
PROJECT_PYTHON = sys.executable


@dataclass(frozen=True)
class DevPorts:
    engine: int = int(os.environ.get("LLM_NODE_DEV_ENGINE_PORT", 8000))
    gateway: int = int(os.environ.get("LLM_NODE_DEV_GATEWAY_PORT", 8080))
    metrics: int = int(os.environ.get("LLM_NODE_DEV_METRICS_PORT", 9101))


def dev_specs(ports: DevPorts) -> tuple[EngineSpec, GatewaySpec]:
    """The dev stack's engine and gateway specs, re-pointed at local paths and ports."""
    from stacks.config import load_stack_specs

    _, gateway = load_stack_specs("dev")
    engine = local_engine_spec(ports.engine)
    gateway = dataclasses.replace(gateway, engines=[f"http://127.0.0.1:{ports.engine}"], host="127.0.0.1",
                                  port=ports.gateway, metrics_port=ports.metrics)
    return engine, gateway


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
                            text=True, env=os.environ | {GATEWAY_SECRET_ENV["database_url"]: database_url})
    if result.returncode != 0:
        raise RuntimeError(f"llm_gateway.admin {args[0]} failed:\n{result.stderr.strip()}")
    return result.stdout


def start(ports: DevPorts = DevPorts()) -> dict[str, str]:
    STATE.mkdir(parents=True, exist_ok=True)
    engine_spec, gateway_spec = dev_specs(ports)
    admin_dsn = os.environ.get("LLM_NODE_PG_ADMIN_DSN") or ensure_postgres()
    database_url = ensure_database(admin_dsn, "llmnode_dev")
    redis_url = ensure_redis() + "/1"

    engine, gateway = _process("engine"), _process("gateway")
    external_engine = os.environ.get("LLM_NODE_DEV_ENGINE_URL")  # reuse a running engine (tests do)
    if external_engine:
        gateway_spec = dataclasses.replace(gateway_spec, engines=[external_engine.rstrip("/")])
    else:
        if engine.pid() is None:
            print(f"starting vLLM (CPU) on 127.0.0.1:{ports.engine}; first start takes about a minute ...",
                  flush=True)
            engine.start(engine_process_argv(engine_spec, str(ENGINE_PYTHON)), engine_env(engine_spec), ROOT)
        engine.wait_until(lambda: http_ok(f"http://127.0.0.1:{ports.engine}/health"), 600, "healthy")

    _admin(["migrate"], database_url)
    if gateway.pid() is None:
        secret_env = {
            GATEWAY_SECRET_ENV["database_url"]: database_url,
            GATEWAY_SECRET_ENV["redis_url"]: redis_url,
            GATEWAY_SECRET_ENV["admin_token"]: _secret("admin-token"),
        }
        gateway.start(gateway_process_argv(PROJECT_PYTHON), gateway_env(gateway_spec) | secret_env, ROOT)
    gateway.wait_until(lambda: http_ok(f"http://127.0.0.1:{ports.gateway}/readyz"), 120, "ready")

    env_file = STATE / "env"
    key = _existing_key(env_file) or json.loads(_admin(
        ["create-key", "--name", "dev", "--tier", "standard", "--json"], database_url))["key"]
    base_url = f"http://127.0.0.1:{ports.gateway}/v1"
    env_file.write_text(f"export OPENAI_BASE_URL={base_url}\nexport OPENAI_API_KEY={key}\n")
    env_file.chmod(0o600)
    return {"base_url": base_url, "key": key, "model": engine_spec.served_model_name, "env_file": str(env_file),
            "database_url": database_url}


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


def stop() -> list[str]:
    # Gateway first, so in-flight requests drain while the engine still answers.
    return [name for name in ("gateway", "engine") if _process(name).stop()]


def status() -> dict[str, int | None]:
    return {name: _process(name).pid() for name in ("engine", "gateway")}
