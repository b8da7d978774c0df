"""A node deployed by ``pulumi up``, reached through testinfra and its public URL.

testinfra runs the commands on the Docker host (``--hosts=ssh://ops@node``, or
``--hosts=local://`` on the node itself); the public checks go through Traefik over TLS
like any client. Internal services are probed from throwaway containers attached to the
node's own networks (the gateway image, which has Python), so nothing needs a host port.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from prometheus.render import CLOUDFLARED_JOB, GATEWAY_JOB, PROMETHEUS_JOB, TRAEFIK_JOB, VLLM_JOB
from stacks import naming
from stacks.config import NodeSettings, load_stack_settings
from stacks.node import DATA_VOLUMES

from .node import Listener, Service

if TYPE_CHECKING:
    import testinfra


@dataclass(frozen=True)
class DeployedLayout:
    """What the stack created and under which names: from its settings (stacks/config.py, the
    same reader the Pulumi program uses) and, when given, ``pulumi stack output --json``."""

    settings: NodeSettings
    outputs: Mapping = field(default_factory=dict)
    # Services of the stack deliberately not deployed on this node -> why (the local deployment
    # of tests/deploy has no Traefik, Grafana or cloudflared image); their checks are skipped
    # with that reason, every other check runs.
    absent: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, stack: str, outputs_file: str | None = None) -> DeployedLayout:
        outputs = json.loads(Path(outputs_file).read_text()) if outputs_file else {}
        return cls(load_stack_settings(stack), outputs)

    @property
    def prefix(self) -> str:
        return self.settings.name_prefix

    def container(self, service: str) -> str:
        return (self.outputs.get("containers") or {}).get(service) or f"{self.prefix}-{service}"

    def network(self, key: str) -> str:
        return (self.outputs.get("networks") or {}).get(key) or f"{self.prefix}-{key}"

    @property
    def edge_network(self) -> str:
        return self.network("edge")

    @property
    def internal_network(self) -> str:
        return self.network("internal")

    @property
    def tunnel(self) -> bool:
        return self.settings.tunnel_enabled

    @property
    def data_volumes(self) -> tuple[str, ...]:
        if self.outputs.get("volumes"):
            return tuple(self.outputs["volumes"].values())
        keys = [k for k in DATA_VOLUMES
                if not (k == "models" and self.settings.models_host_dir)
                and not (k == "traefik-acme" and self.settings.edge.tls_mode != "acme")]
        return tuple(f"{self.prefix}-{k}" for k in keys)

    def skip_if_absent(self, service: str) -> None:
        if service in self.absent:
            import pytest

            pytest.skip(self.absent[service])

    @property
    def published_ports(self) -> dict[int, str]:
        """Host port -> the address it may be bound to (only Traefik publishes)."""
        if "traefik" in self.absent:
            return {}
        edge = self.settings.edge
        ports = {edge.http_port: edge.bind_address, edge.https_port: edge.bind_address} if edge.publish else {}
        if edge.ops_port:
            ports[edge.ops_port] = "127.0.0.1"  # ping, dashboard, Grafana: loopback only
        return ports

    @property
    def jobs(self) -> tuple[str, ...]:
        return ("gateway-migrate",) + (("quantize",) if self.settings.quantize else ())

    def services(self) -> tuple[Service, ...]:
        """Each long-running container, a process it runs and the port it listens on inside."""
        gateway = self.settings.gateway
        engines = tuple(Service(alias, r"vllm", naming.ENGINE_PORT)
                        for group in self.settings.engines for alias in group.aliases)
        every = engines + (
            Service("gateway", r"llm_gateway", gateway.port),
            Service("postgres", r"postgres", naming.POSTGRES_PORT),
            Service("redis", r"redis-server", naming.REDIS_PORT),
            Service("traefik", r"traefik", 443),
            Service("prometheus", r"prometheus", naming.PROMETHEUS_PORT),
            Service("grafana", r"grafana", naming.GRAFANA_PORT),
        ) + ((Service("cloudflared", r"cloudflared", naming.CLOUDFLARED_METRICS_PORT),) if self.tunnel else ())
        return tuple(service for service in every if service.name not in self.absent)


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


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Local ports in state LISTEN (0A) in /proc/net/tcp or tcp6 text."""
    return {int(m.group(1), 16) for m in re.finditer(
        r"^\s*\d+:\s+[0-9A-F]+:([0-9A-F]{4})\s+[0-9A-F]+:[0-9A-F]{4}\s+0A\s", proc_net_tcp, re.MULTILINE)}


@dataclass
class DeployedNode:
    host: testinfra.host.Host
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

    @property
    def tunnel(self) -> bool:
        return self.layout.tunnel

    @property
    def services(self) -> tuple[Service, ...]:
        return self.layout.services()

    @property
    def expected_jobs(self) -> frozenset[str]:
        jobs = {VLLM_JOB, GATEWAY_JOB, TRAEFIK_JOB, PROMETHEUS_JOB} | ({CLOUDFLARED_JOB} if self.tunnel else set())
        return frozenset(jobs - self.absent_jobs)

    @property
    def absent_jobs(self) -> frozenset[str]:
        """Scrape jobs of services not deployed here (their targets cannot be up)."""
        by_service = {"traefik": TRAEFIK_JOB, "cloudflared": CLOUDFLARED_JOB}
        return frozenset(job for service, job in by_service.items() if service in self.layout.absent)

    def listener(self, service: Service) -> Listener:
        """Ports read from the container's own network namespace (/proc/PID/net/tcp*); when
        ``service.port`` listens there, the command lines of the container's processes."""
        container = self.layout.container(service.name)
        pid = self.inspect(container)["State"]["Pid"]
        tables = self.host.run("cat /proc/%s/net/tcp /proc/%s/net/tcp6", str(pid), str(pid)).stdout
        if service.port not in listening_ports(tables):
            return Listener(port=service.port, command_lines=())
        top = self.docker("top %s -o args", container).splitlines()[1:]  # ps output, header dropped
        return Listener(port=service.port, command_lines=tuple(line.strip() for line in top))

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

    def network_gateway(self, network: str) -> str:
        """The Docker host's address on ``network`` (its bridge)."""
        config = json.loads(self.docker("network inspect %s", network))[0]["IPAM"]["Config"]
        return config[0]["Gateway"]

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
                            f"http://{naming.PROMETHEUS}:{naming.PROMETHEUS_PORT}/api/v1/targets?state=active")
        if answer.get("status") != 200:
            raise AssertionError(f"Prometheus API not answering: {answer}")
        return json.loads(answer["body"])["data"]["activeTargets"]

    # -- a key of its own --------------------------------------------------------------------
    def new_key(self, name: str) -> tuple[str, str]:
        """A fresh key made with the gateway's admin CLI in its container: (key, id)."""
        created = json.loads(self.admin_cli("create-key", "--name", name, "--tier", "standard", "--json"))
        return created["key"], str(created["id"])

    def create_key(self) -> None:
        self.api_key, self._created_key_id = self.new_key("infra-suite")

    @property
    def created_key_id(self) -> str | None:
        return self._created_key_id

    def usage_rows(self, key_id: str) -> list[tuple[str, int, int, int]]:
        """(model, prompt_tokens, completion_tokens, status) recorded for ``key_id`` in PostgreSQL,
        read with psql inside the PostgreSQL container (its local socket)."""
        from stacks.postgres import DATABASE, USER

        if not re.fullmatch(r"[A-Za-z0-9_-]+", key_id):
            raise ValueError(f"unexpected key id {key_id!r}")
        out = self.docker("exec %s psql -U %s -d %s -AtF , -c %s", self.layout.container("postgres"), USER, DATABASE,
                          "SELECT model, prompt_tokens, completion_tokens, status FROM usage_records "
                          f"WHERE key_id = '{key_id}' ORDER BY id")
        rows = []
        for line in out.splitlines():
            model, prompt, completion, status = line.rsplit(",", 3)
            rows.append((model, int(prompt), int(completion), int(status)))
        return rows

    def revoke_created_key(self) -> None:
        if self._created_key_id:
            self.admin_cli("revoke-key", self._created_key_id)
            self._created_key_id = None
