"""Checks that need the deployed node's Docker host (skipped, with the reason, without --hosts).

    LLM_NODE_URL=https://llm.example.com .venv/bin/pytest tests/infra --hosts=ssh://ops@node
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"


def test_every_container_is_running_and_healthy(deployed_node):
    node = deployed_node
    problems = []
    for service in node.services:
        name = node.layout.container(service.name)
        state = node.inspect(name)["State"]
        health = (state.get("Health") or {}).get("Status")
        if not state["Running"] or state.get("Restarting"):
            problems.append(f"{name}: {state['Status']}")
        elif health != "healthy":
            problems.append(f"{name}: health {health!r} (every container declares a healthcheck)")
    assert not problems, "\n".join(problems)


def test_only_the_intended_host_ports_listen(deployed_node):
    node = deployed_node
    allowed = set(node.layout.host_ports) | {int(p) for p in os.environ.get("LLM_NODE_ALLOWED_PORTS", "22").split(",") if p}
    exposed = set()
    for spec in node.host.socket.get_listening_sockets():
        match = re.match(r"tcp://(.+):(\d+)$", spec)
        if match and not match.group(1).startswith(("127.", "::1")):  # loopback is not reachable from outside
            exposed.add(int(match.group(2)))
    assert exposed - allowed == set(), f"unexpected ports listening on the host: {sorted(exposed - allowed)}"
    assert set(node.layout.host_ports) <= exposed, "Traefik does not publish 80 and 443"


@pytest.mark.parametrize("service,port", [("postgres", 5432), ("redis", 6379), ("engine-0", 8000)])
def test_internal_services_are_unreachable_from_the_edge_network(deployed_node, service, port):
    node = deployed_node
    container = node.layout.container(service)
    # Reachable from the internal network (so the probe itself works) ...
    assert node.can_connect(node.layout.internal_network, container, port) == "connected"
    # ... and neither by name nor by address from the edge network.
    assert node.can_connect(node.layout.edge_network, container, port).startswith("refused")
    address = node.ip_on(container, node.layout.internal_network)
    assert address and node.can_connect(node.layout.edge_network, address, port).startswith("refused")
    assert node.layout.edge_network not in node.inspect(container)["NetworkSettings"]["Networks"]


def test_traefik_answers_ping(deployed_node):
    node = deployed_node
    result = node.host.run("docker exec %s traefik healthcheck --ping", node.layout.container("traefik"))
    assert result.rc == 0, result.stdout + result.stderr


def test_readyz_through_traefik_over_tls(deployed_node):
    node = deployed_node
    assert node.api_url.startswith("https://")
    ready = node.http().get(node.api_url + "/readyz", timeout=15)
    assert ready.status_code == 200, ready.text
    plain = node.http().get("http://" + node.api_url.removeprefix("https://") + "/readyz", timeout=15,
                            allow_redirects=False)
    assert plain.status_code in (301, 302, 307, 308) and plain.headers["Location"].startswith("https://")


def test_grafana_holds_the_provisioned_dashboards(deployed_node):
    node = deployed_node
    grafana = node.layout.container("grafana")
    env = dict(item.split("=", 1) for item in node.inspect(grafana)["Config"]["Env"])
    password = env.get("GF_SECURITY_ADMIN_PASSWORD")
    if password is None and env.get("GF_SECURITY_ADMIN_PASSWORD__FILE"):
        password = node.docker("exec %s cat %s", grafana, env["GF_SECURITY_ADMIN_PASSWORD__FILE"]).strip()
    user = env.get("GF_SECURITY_ADMIN_USER", "admin")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    answer = node.probe(node.layout.internal_network, f"http://{grafana}:3000/api/search?type=dash-db",
                        {"Authorization": f"Basic {auth}"})
    assert answer.get("status") == 200, answer
    found = {d["uid"] for d in json.loads(answer["body"])}
    wanted = {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}
    assert wanted and wanted <= found, f"missing dashboards: {sorted(wanted - found)}"


def test_cloudflared_is_connected_when_the_tunnel_is_enabled(deployed_node):
    node = deployed_node
    if not node.tunnel:
        pytest.skip("the tunnel is not enabled on this node")
    answer = node.probe(node.layout.internal_network, f"http://{node.layout.container('cloudflared')}:2000/ready")
    assert answer.get("status") == 200, answer


def test_data_volumes_are_present(deployed_node):
    node = deployed_node
    volumes = set(node.docker("volume ls --format %s", "{{.Name}}").split())
    missing = set(node.layout.data_volumes) - volumes
    assert not missing, f"missing volumes: {sorted(missing)}"
