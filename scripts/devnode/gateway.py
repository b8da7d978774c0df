"""The gateway as a local process: real `python -m llm_gateway` from the same launch code as
the node (services/launch.py: gateway_env, gateway_process_argv; ``process_env``) on free ports. The tests'
gateway fixtures, the benchmarks and the dev node's tests start it this way.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.launch import GatewaySpec, gateway_env, gateway_process_argv, gateway_secrets_env

from .processes import ManagedProcess, free_port, http_ok
from .scrape import metric_sum, scrape

ADMIN_TOKEN = "test-admin-" + secrets.token_hex(8)


@dataclass
class Gateway:
    spec: GatewaySpec
    proc: ManagedProcess
    admin_token: str
    database_url: str
    redis_url: str
    url: str = field(init=False)
    metrics_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.spec.port}"
        self.metrics_url = f"http://127.0.0.1:{self.spec.metrics_port}/metrics"

    def metrics_text(self) -> str:
        return scrape(self.metrics_url)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0.0 if none)."""
        return metric_sum(self.metrics_text(), name, **labels)

    def settled_metric(self, name: str, expected: float, timeout: float = 10.0, **labels: str) -> float:
        """The metric once it reaches ``expected`` (or its value after ``timeout``). The gateway
        counts a request when its ASGI app returns, just after the last byte left: a client can
        read the whole answer before the count moves."""
        deadline = time.monotonic() + timeout
        while (value := self.metric(name, **labels)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return value

    def log_tail(self, lines: int = 60) -> str:
        return self.proc.log_tail(lines)

    def log_text(self) -> str:
        return Path(self.proc.log_path).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.signal(sig)

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self, timeout: float = 30.0) -> int | None:
        return self.proc.stop(timeout)


def process_env(spec: GatewaySpec, *, database_url: str, redis_url: str, admin_token: str | None) -> dict[str, str]:
    """A local gateway process's environment: the node's (launch.py) plus the secrets, which a
    container reads from files instead."""
    return gateway_env(spec) | gateway_secrets_env({"database_url": database_url, "redis_url": redis_url,
                                                    "admin_token": admin_token})


def start_gateway(log_dir: Path, *, database_url: str, redis_url: str, admin_token: str | None = ADMIN_TOKEN,
                  wait_ready: bool = True, name: str | None = None, **spec_fields) -> Gateway:
    spec_fields.setdefault("host", "127.0.0.1")
    spec_fields.setdefault("port", free_port())
    spec_fields.setdefault("metrics_port", free_port())
    spec = GatewaySpec(**spec_fields)
    env = process_env(spec, database_url=database_url, redis_url=redis_url, admin_token=admin_token)
    proc = ManagedProcess(name or f"gateway-{spec.port}", gateway_process_argv(sys.executable), log_dir, env=env)
    gateway = Gateway(spec, proc, admin_token or "", database_url, redis_url)
    path = "/readyz" if wait_ready else "/healthz"
    proc.ready_or_stopped(lambda: http_ok(gateway.url + path), 90, "ready" if wait_ready else "live")
    return gateway
