"""A node deployed by ``pulumi up``, reached through testinfra and its public URL.

testinfra runs the commands on the Docker host (``--hosts=ssh://ops@node``, or
``--hosts=local://`` on the node itself); the public checks go through Traefik over TLS
like any client. Internal services are probed from throwaway containers attached to the
node's own networks (the gateway image, which has Python), so nothing needs a host port.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import requests

from prometheus.render import CLOUDFLARED_JOB, GATEWAY_JOB, PROMETHEUS_JOB, TRAEFIK_JOB, VLLM_JOB

from .node import Listener, Service, command_line


@dataclass(frozen=True)
class DeployedLayout:
    """Names the stack gives to what it creates. Defaults follow stacks/; override with env."""

    prefix: str = "llm-node"
    engine_replicas: int = 1
    host_ports: tuple[int, ...] = (80, 443)  # the only ports the node publishes (Traefik)

    def container(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    @property
    def edge_network(self) -> str:
        return f"{self.prefix}-edge"

    @property
    def internal_network(self) -> str:
        return f"{self.prefix}-internal"

    @property
    def data_volumes(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}-{name}" for name in
                     ("postgres-data", "redis-data", "models", "adapters", "prometheus-data", "grafana-data"))

    def services(self, tunnel: bool) -> tuple[Service, ...]:
        """Each container, its main process and the port it listens on inside its network namespace."""
        engines = tuple(Service(f"engine-{i}", r"vllm", 8000) for i in range(self.engine_replicas))
        return engines + (
            Service("gateway", r"llm_gateway", 8080),
            Service("postgres", r"postgres", 5432),
            Service("redis", r"redis-server", 6379),
            Service("traefik", r"traefik", 443),
            Service("prometheus", r"prometheus", 9090),
            Service("grafana", r"grafana", 3000),
        ) + ((Service("cloudflared", r"cloudflared", 2000),) if tunnel else ())

    @classmethod
    def from_env(cls) -> "DeployedLayout":
        return cls(prefix=os.environ.get("LLM_NODE_PREFIX", "llm-node"),
                   engine_replicas=int(os.environ.get("LLM_NODE_ENGINE_REPLICAS", "1")))


# Runs inside a throwaway container: one HTTP request, the answer as JSON on stdout.
_PROBE = """
import json, sys, urllib.request, urllib.error
url, headers = sys.argv[1], json.loads(sys.argv[2])
try:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode(errors="replace")}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode(errors="replace")}))
except Exception as e:
    print(json.dumps({"status": None, "error": f"{type(e).__name__}: {e}"}))
"""

_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print("connected")
except Exception as e:
    print(f"refused {type(e).__name__}: {e}")
"""


@dataclass
class DeployedNode:
    host: "testinfra.host.Host"
    api_url: str
    layout: DeployedLayout
    ca_bundle: str | bool = True  # requests' verify: a CA file for self-signed TLS, or True
    model: str = ""
    api_key: str = ""
    kind: str = "deployed"
    _created_key_id: str | None = None
    _inspect_cache: dict = field(default_factory=dict)

    # -- docker on the node ----------------------------------------------------------------
    def docker(self, args: str, *params: str) -> str:
        return self.host.check_output("docker " + args, *params)

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker("inspect %s", container))[0]

    def containers(self) -> list[str]:
        return self.docker("ps --all --format %s --filter %s", "{{.Names}}",
                           f"name=^{self.layout.prefix}-").split()

    @property
    def tunnel(self) -> bool:
        return self.layout.container("cloudflared") in self.containers()

    @property
    def services(self) -> tuple[Service, ...]:
        return self.layout.services(self.tunnel)

    @property
    def expected_jobs(self) -> frozenset[str]:
        jobs = {VLLM_JOB, GATEWAY_JOB, TRAEFIK_JOB, PROMETHEUS_JOB}
        return frozenset(jobs | ({CLOUDFLARED_JOB} if self.tunnel else set()))

    def listener(self, service: Service) -> Listener:
        """Listening ports read from the container's own network namespace (/proc/PID/net/tcp*)."""
        pid = self.inspect(self.layout.container(service.name))["State"]["Pid"]
        tables = self.host.run("cat /proc/%s/net/tcp /proc/%s/net/tcp6", str(pid), str(pid)).stdout
        listening = {int(m.group(1), 16) for m in re.finditer(r"^\s*\d+:\s+[0-9A-F]+:([0-9A-F]{4})\s+[0-9A-F:]+\s+0A\s",
                                                              tables, re.MULTILINE)}
        lines = (command_line(self.host, pid),) if service.port in listening else ()
        return Listener(port=service.port, command_lines=lines)

    def gateway_image(self) -> str:
        return self.inspect(self.layout.container("gateway"))["Config"]["Image"]

    def probe(self, network: str, url: str, headers: Mapping[str, str] | None = None) -> dict:
        """GET ``url`` from a throwaway container on ``network``: {"status", "body"} or {"error"}."""
        out = self.docker("run --rm --network %s --entrypoint python %s -c %s %s %s",
                          network, self.gateway_image(), _PROBE, url, json.dumps(dict(headers or {})))
        return json.loads(out.strip().splitlines()[-1])

    def can_connect(self, network: str, address: str, port: int) -> str:
        out = self.docker("run --rm --network %s --entrypoint python %s -c %s %s %s",
                          network, self.gateway_image(), _CONNECT, address, str(port))
        return out.strip().splitlines()[-1]

    def ip_on(self, container: str, network: str) -> str | None:
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        return (networks.get(network) or {}).get("IPAddress") or None

    def admin_cli(self, *args: str) -> str:
        return self.docker("exec %s python -m llm_gateway.admin " + " ".join(["%s"] * len(args)),
                           self.layout.container("gateway"), *args)

    # -- clients' view -------------------------------------------------------------------------
    def http(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.ca_bundle
        return session

    def prometheus_targets(self) -> list[dict]:
        answer = self.probe(self.layout.internal_network,
                            f"http://{self.layout.container('prometheus')}:9090/api/v1/targets?state=active")
        if answer.get("status") != 200:
            raise AssertionError(f"Prometheus API not answering: {answer}")
        return json.loads(answer["body"])["data"]["activeTargets"]

    # -- a key of its own --------------------------------------------------------------------
    def create_key(self) -> None:
        created = json.loads(self.admin_cli("create-key", "--name", "infra-suite", "--tier", "standard", "--json"))
        self.api_key, self._created_key_id = created["key"], str(created["id"])

    def revoke_created_key(self) -> None:
        if self._created_key_id:
            self.admin_cli("revoke-key", self._created_key_id)
            self._created_key_id = None
