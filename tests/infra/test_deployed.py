"""Checks that need the deployed node's Docker host (skipped, with the reason, without --hosts).

    LLM_NODE_STACK=prod .venv/bin/pytest tests/infra --hosts=ssh://ops@gpu-node-1
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest

from stacks import naming

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
    for job in node.layout.jobs:  # one-shot containers: migrations, the quantize job
        name = node.layout.container(job)
        state = node.inspect(name)["State"]
        if state["Status"] != "exited" or state["ExitCode"] != 0:
            problems.append(f"{name}: job {state['Status']} with exit code {state['ExitCode']}")
    assert not problems, "\n".join(problems)


def test_only_the_intended_host_ports_listen(deployed_node):
    node = deployed_node
    published = node.layout.published_ports
    extra = {int(p) for p in os.environ.get("LLM_NODE_ALLOWED_PORTS", "22").split(",") if p}
    problems = []
    for spec in node.host.socket.get_listening_sockets():
        match = re.match(r"tcp://(.+):(\d+)$", spec)
        if not match:
            continue
        address, port = match.group(1), int(match.group(2))
        loopback = address.startswith("127.") or address == "::1"
        if port in published:
            bound = published[port]
            if bound.startswith("127.") and not loopback:
                problems.append(f"{port} should listen on {bound} only, listens on {address}")
        elif not loopback and port not in extra:
            problems.append(f"unexpected public listener {address}:{port}")
    missing = set(published) - {int(m.group(1)) for m in
                                (re.search(r":(\d+)$", s) for s in node.host.socket.get_listening_sockets()) if m}
    assert not problems and not missing, "\n".join(problems + [f"not listening: {sorted(missing)}"])


@pytest.mark.parametrize("alias,port", [(naming.POSTGRES, naming.POSTGRES_PORT), (naming.REDIS, naming.REDIS_PORT),
                                        (naming.engine_alias(0), naming.ENGINE_PORT)])
def test_internal_services_are_unreachable_from_the_edge_network(deployed_node, alias, port):
    node = deployed_node
    layout = node.layout
    # Reachable from the internal network (so the probe itself works) ...
    assert node.can_connect(layout.internal_network, alias, port) == "connected"
    # ... and neither by name nor by address from the edge network.
    assert node.can_connect(layout.edge_network, alias, port).startswith("refused")
    container = layout.container(alias)
    address = node.ip_on(container, layout.internal_network)
    assert address and node.can_connect(layout.edge_network, address, port).startswith("refused")
    assert layout.edge_network not in node.inspect(container)["NetworkSettings"]["Networks"]


def test_traefik_answers_ping(deployed_node):
    node = deployed_node
    result = node.host.run("docker exec %s traefik healthcheck --ping", node.layout.container("traefik"))
    assert result.rc == 0, result.stdout + result.stderr


def test_traefik_ops_and_metrics_refuse_containers_on_its_networks(deployed_node):
    """ops (dashboard API) admits only the host's published-port path and loopback; metrics only
    Prometheus' fixed address (traefik/reach.py has the model, tests/traefik/test_reach.py every pair)."""
    node = deployed_node
    layout = node.layout
    ops, metrics = 8080, 8082  # traefik/static.py PORTS
    # a container on the edge network connects to ops, but is refused by the allow-list
    answer = node.probe(layout.edge_network, f"http://{naming.TRAEFIK}:{ops}/api/rawdata")
    assert answer.get("status") == 403, answer
    # metrics listens only on Traefik's metrics-network address ...
    assert node.can_connect(layout.edge_network, naming.TRAEFIK, metrics).startswith("refused")
    # ... and admits only Prometheus there, not another container on that network
    answer = node.probe(layout.network("metrics"), f"http://{naming.TRAEFIK}:{metrics}/metrics")
    assert answer.get("status") == 403, answer
    # the host's own path (an SSH tunnel's) through the 127.0.0.1-published port still gets in
    if layout.settings.edge.ops_port:
        answer = node.probe("host", f"http://127.0.0.1:{layout.settings.edge.ops_port}/ping")
        assert answer.get("status") == 200, answer


def test_readyz_through_traefik_over_tls(deployed_node):
    node = deployed_node
    assert node.api_url.startswith("https://")
    ready = node.http().get(node.api_url + "/readyz", timeout=15)
    assert ready.status_code == 200, ready.text
    if node.layout.settings.edge.publish:  # plain HTTP is only a redirect to HTTPS
        edge = node.layout.settings.edge
        plain_url = f"http://{node.layout.settings.domain}" + ("" if edge.http_port == 80 else f":{edge.http_port}")
        plain = node.http().get(plain_url + "/readyz", timeout=15, allow_redirects=False)
        assert plain.status_code in (301, 302, 307, 308) and plain.headers["Location"].startswith("https://")


def test_grafana_holds_the_provisioned_dashboards(deployed_node):
    node = deployed_node
    grafana = node.layout.container("grafana")
    user = node.layout.outputs.get("grafana_admin_user", "admin")
    password = node.layout.outputs.get("grafana_admin_password")
    if password is None:  # no outputs file: the password file Pulumi uploaded into the container
        env = dict(item.split("=", 1) for item in node.inspect(grafana)["Config"]["Env"])
        password = env.get("GF_SECURITY_ADMIN_PASSWORD") or node.docker(
            "exec %s cat %s", grafana, env["GF_SECURITY_ADMIN_PASSWORD__FILE"]).strip()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    answer = node.probe(node.layout.internal_network,
                        f"http://{naming.GRAFANA}:{naming.GRAFANA_PORT}/api/search?type=dash-db",
                        {"Authorization": f"Basic {auth}"})
    assert answer.get("status") == 200, answer
    found = {d["uid"] for d in json.loads(answer["body"])}
    wanted = {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}
    assert wanted and wanted <= found, f"missing dashboards: {sorted(wanted - found)}"


def test_cloudflared_is_connected_when_the_tunnel_is_enabled(deployed_node):
    node = deployed_node
    if not node.tunnel:
        pytest.skip("the tunnel is not enabled on this stack (tunnel.enabled: false)")
    # cloudflared's /ready answers 200 once it holds at least one connection to Cloudflare.
    # It sits on the edge and metrics networks, not the internal one.
    answer = node.probe(node.layout.network("metrics"),
                        f"http://{naming.CLOUDFLARED}:{naming.CLOUDFLARED_METRICS_PORT}/ready")
    assert answer.get("status") == 200, answer


def test_data_volumes_are_present(deployed_node):
    node = deployed_node
    volumes = set(node.docker("volume ls --format %s", "{{.Name}}").split())
    missing = set(node.layout.data_volumes) - volumes
    assert not missing, f"missing volumes: {sorted(missing)}"
