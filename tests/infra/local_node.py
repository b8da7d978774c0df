"""The node ``make test`` runs on this machine, described for the infra tests.

Every part is real: the session's CPU vLLM, a ``python -m llm_gateway`` process, the shared
PostgreSQL and Redis, and a Prometheus started with the project's own scrape config and
rules (prometheus/render.py), pointed at the local engine and gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import testinfra

from prometheus.render import GATEWAY_JOB, VLLM_JOB, render_prometheus_config, rule_files
from tests.support.prometheus import Prometheus, rules_dir, start_prometheus

from .node import Listener, Service, host_port, listeners_via_ss

POSTGRES_PORT = 5432
REDIS_PORT = 6379


@dataclass
class LocalNode:
    api_url: str
    api_key: str
    model: str
    services: tuple[Service, ...]
    prometheus: Prometheus
    expected_jobs: frozenset[str] = frozenset({VLLM_JOB, GATEWAY_JOB})
    kind: str = "local"
    host: testinfra.host.Host = field(default_factory=lambda: testinfra.get_host("local://"))

    def listener(self, service: Service) -> Listener:
        return listeners_via_ss(self.host, service.port)

    def http(self) -> requests.Session:
        return requests.Session()

    def prometheus_targets(self) -> list[dict]:
        return self.prometheus.active_targets()


def local_services(engine_url: str, gateway_url: str, gateway_metrics_url: str,
                   prometheus_url: str) -> tuple[Service, ...]:
    port = lambda url: urlsplit(url).port  # noqa: E731
    return (
        Service("vllm", r"vllm\.entrypoints\.openai\.api_server", port(engine_url)),
        Service("gateway", r"-m llm_gateway\b", port(gateway_url)),
        Service("gateway metrics", r"-m llm_gateway\b", port(gateway_metrics_url)),
        Service("postgresql", r"\bpostgres\b", POSTGRES_PORT),
        Service("redis", r"\bredis-server\b", REDIS_PORT),
        Service("prometheus", r"\bprometheus\b.*--config\.file=", port(prometheus_url)),
    )


def start_local_prometheus(engine_url: str, gateway_metrics_url: str, work_dir, log_dir) -> Prometheus:
    """Prometheus with the node's scrape config and rules, scraping the local engine and gateway."""
    config = render_prometheus_config(
        {VLLM_JOB: [host_port(engine_url)], GATEWAY_JOB: [host_port(gateway_metrics_url)]},
        rules_dir=rules_dir(work_dir),
    )
    return start_prometheus(config, work_dir, log_dir, rule_files=rule_files(), name="prometheus-infra")
