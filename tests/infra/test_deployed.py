"""Checks that need the deployed node's Docker host.

Without --hosts they run against the dev stack deployed on a private Docker engine by the test
session (tests/deploy; only the checks of Traefik, Grafana and cloudflared are skipped there,
each naming why). Against a real node:

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
from stacks.containers import LABEL_STACK

from .node import wait_for

# The first test also sets up the local deployment (tests/deploy): on a fresh machine its image
# builds take about 10 minutes, which pytest-timeout counts against that test.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

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
    assert not problems and not missing, "\n".join([*problems, f"not listening: {sorted(missing)}"])


ENGINES = "every engine"  # resolved from the deployed stack's groups (engine-0, engine-chat-0, ...)


@pytest.mark.parametrize("alias,port", [(naming.POSTGRES, naming.POSTGRES_PORT), (naming.REDIS, naming.REDIS_PORT),
                                        (ENGINES, naming.ENGINE_PORT)])
def test_internal_services_are_unreachable_from_the_edge_network(deployed_node, alias, port):
    if alias == ENGINES:
        for engine in [a for group in deployed_node.layout.settings.engines for a in group.aliases]:
            _unreachable_from_the_edge(deployed_node, engine, port)
    else:
        _unreachable_from_the_edge(deployed_node, alias, port)


def _unreachable_from_the_edge(node, alias: str, port: int) -> None:
    layout = node.layout
    # Reachable from the internal network (so the probe itself works) ...
    assert node.can_connect(layout.internal_network, alias, port) == "connected"
    # ... and neither by name nor by address from the edge network.
    assert node.can_connect(layout.edge_network, alias, port).startswith("refused")
    container = layout.container(alias)
    address = node.ip_on(container, layout.internal_network)
    assert address and node.can_connect(layout.edge_network, address, port).startswith("refused")
    assert layout.edge_network not in node.inspect(container)["NetworkSettings"]["Networks"]


@pytest.mark.parametrize("key", ["internal", "metrics"])
def test_internal_networks_have_no_way_out(deployed_node, key):
    # Nothing leaves an internal network through the Docker host: not to a container on another
    # network (the gateway's edge address, while its API answers there), not to the internet.
    # "Refused" would mean a route (a TCP reset came back); only "unreachable"/timeouts pass.
    # (The Docker host's own addresses are another matter: Docker 20.10 gives an internal
    # network a gateway on the host, and the host answers there; docs/verification.md.)
    node = deployed_node
    layout = node.layout
    gateway = layout.container("gateway")
    edge_address = node.ip_on(gateway, layout.edge_network)
    port = layout.settings.gateway.port
    assert node.can_connect(layout.edge_network, edge_address, port) == "connected"  # the probe itself works
    for address, target_port in ((edge_address, port), ("1.1.1.1", 443)):
        answer = node.can_connect(layout.network(key), address, target_port)
        assert answer.startswith("refused") and "ConnectionRefused" not in answer, \
            f"{layout.network(key)} -> {address}:{target_port}: {answer}"


def test_traefik_answers_ping(deployed_node):
    node = deployed_node
    node.layout.skip_if_absent("traefik")
    result = node.host.run("docker exec %s traefik healthcheck --ping", node.layout.container("traefik"))
    assert result.rc == 0, result.stdout + result.stderr


def test_traefik_ops_and_metrics_refuse_containers_on_its_networks(deployed_node):
    """ops (dashboard API) admits only the host's published-port path and loopback; metrics only
    Prometheus' fixed address (traefik/reach.py has the model, tests/traefik/test_reach.py every pair)."""
    node = deployed_node
    node.layout.skip_if_absent("traefik")
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
    node.layout.skip_if_absent("traefik")
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
    node.layout.skip_if_absent("grafana")
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
    node.layout.skip_if_absent("cloudflared")
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


def test_only_the_intended_containers_publish_host_ports(deployed_node):
    # What Docker itself publishes for the stack's containers: only Traefik's edge and ops ports.
    node = deployed_node
    names = node.docker("ps -a --filter %s --format %s", f"label={LABEL_STACK}", "{{.Names}}").split()
    assert names, "no container of the stack found"
    published: dict[int, str] = {}
    for name in names:
        for bindings in (node.inspect(name)["HostConfig"].get("PortBindings") or {}).values():
            for binding in bindings or []:
                published[int(binding["HostPort"])] = f"{binding.get('HostIp') or '0.0.0.0'} ({name})"
    wanted = node.layout.published_ports
    unexpected = {port: where for port, where in published.items() if port not in wanted}
    wrong_address = {port: where for port, where in published.items()
                     if port in wanted and not where.startswith(wanted[port])}
    assert not unexpected and not wrong_address, f"unexpected: {unexpected}; wrong address: {wrong_address}"
    assert set(published) == set(wanted), f"published {sorted(published)}, the stack says {sorted(wanted)}"


def test_the_gateway_is_ready_and_refuses_requests_without_a_key(deployed_node):
    node = deployed_node
    ready = node.http().get(node.api_url + "/readyz", timeout=15)
    assert ready.status_code == 200, ready.text
    refused = node.http().post(node.api_url + "/v1/chat/completions", timeout=15,
                               json={"model": node.model, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 401, refused.text


def _openai_client(node, key: str):
    import ssl

    import openai

    extra = {}
    if node.ca_bundle is not True:  # a self-signed or provided certificate's CA, or "insecure"
        extra["http_client"] = openai.DefaultHttpxClient(
            verify=False if node.ca_bundle is False else ssl.create_default_context(cafile=node.ca_bundle))
    return openai.OpenAI(base_url=node.api_url + "/v1", api_key=key, max_retries=0, timeout=120, **extra)


def test_a_fresh_key_completes_plain_and_streamed_with_the_openai_client_and_usage_is_recorded(deployed_node):
    node = deployed_node
    key, key_id = node.new_key("infra-suite-openai")
    try:
        client = _openai_client(node, key)
        plain = client.chat.completions.create(model=node.model, max_tokens=8,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert plain.choices[0].message.role == "assistant"
        assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(model=node.model, max_tokens=8, stream=True,
                                                     stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": "Count to three."}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        streamed_usage = [c.usage for c in chunks if c.usage is not None]
        assert text, "the stream carried no text"
        assert streamed_usage and streamed_usage[-1].completion_tokens > 0

        # Both requests are billed to the new key in PostgreSQL (the gateway writes usage
        # records shortly after each response).
        def both_recorded():
            rows = node.usage_rows(key_id)
            return rows if len(rows) >= 2 else None

        rows = wait_for(both_recorded, timeout=60) or node.usage_rows(key_id)
        assert len(rows) == 2, f"usage rows for the key: {rows}"
        assert {row[0] for row in rows} == {node.model}
        assert all(status == 200 for *_, status in rows), rows
        assert [row[2] for row in rows] == [plain.usage.completion_tokens, streamed_usage[-1].completion_tokens]
    finally:
        node.admin_cli("revoke-key", key_id)


def test_prometheus_scrapes_every_deployed_target_and_all_are_up(deployed_node):
    node = deployed_node

    def every_job_up():
        targets = [t for t in node.prometheus_targets() if t["labels"]["job"] not in node.absent_jobs]
        jobs = {t["labels"]["job"] for t in targets}
        return targets if jobs >= node.expected_jobs and all(t["health"] == "up" for t in targets) else None

    wait_for(every_job_up, timeout=90, interval=3)
    targets = node.prometheus_targets()
    present = [t for t in targets if t["labels"]["job"] not in node.absent_jobs]
    assert {t["labels"]["job"] for t in present} >= node.expected_jobs
    down = [(t["labels"]["job"], t["scrapeUrl"], t.get("lastError")) for t in present if t["health"] != "up"]
    assert not down, f"targets down: {down}"
