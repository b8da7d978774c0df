"""The node under test for the infra suite.

Without ``--hosts`` the suite checks the local node that ``make test`` starts (real CPU vLLM,
gateway, PostgreSQL, Redis, Prometheus as processes), and the deployed-node checks
(test_deployed.py) run against the dev stack deployed by ``make test`` itself on a private
Docker daemon (tests/deploy: the Pulumi program applied for real, with stand-in images;
Traefik, Grafana and cloudflared are not deployed there, and their checks are skipped with
that reason). With ``--hosts`` it checks a deployed node and nothing local is started:

    pulumi stack output --stack prod --json --show-secrets > /tmp/prod-outputs.json
    LLM_NODE_STACK=prod LLM_NODE_STACK_OUTPUTS=/tmp/prod-outputs.json \
        .venv/bin/pytest tests/infra --hosts=ssh://ops@gpu-node-1

Environment (deployed mode):
  LLM_NODE_STACK          the stack that was deployed (default prod); its settings (ports, names,
                          replicas, tunnel) are read with stacks/config.py like the program does
  LLM_NODE_STACK_OUTPUTS  optional: `pulumi stack output --json --show-secrets` saved to a file
                          (container/network/volume names, Grafana admin password)
  LLM_NODE_URL            the public URL (default: the stack's public_url)
  LLM_NODE_CA             CA bundle for a self-signed/provided certificate, or "insecure"
  LLM_NODE_API_KEY        a key to use (default: one is created with the gateway's admin CLI
                          inside its container, and revoked at the end)
  LLM_NODE_ALLOWED_PORTS  host ports besides the node's that may listen publicly (default 22)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from unittest import mock

import pytest
import testinfra

from .deployed_node import DeployedLayout, DeployedNode
from .local_node import LocalNode, local_services, start_local_prometheus

NO_DOCKER_HOST = ("no Docker host given: this check needs a node deployed with `pulumi up`; "
                  "run `pytest tests/infra --hosts=ssh://user@node` with LLM_NODE_STACK set (docs/verification.md)")


def deployed_hosts(config) -> list[str]:
    return [h for h in (config.option.hosts or "").split(",") if h]


@pytest.fixture(scope="session")
def local_node(engine, gateway, make_key, log_dir, tmp_path_factory) -> LocalNode:
    key = make_key(tier="standard", name="infra-suite")
    prometheus = start_local_prometheus(engine.url, gateway.metrics_url, tmp_path_factory.mktemp("prometheus-infra"),
                                        log_dir)
    try:
        yield LocalNode(
            api_url=gateway.url,
            api_key=key,
            model=engine.model,
            services=local_services(engine.url, gateway.url, gateway.metrics_url, prometheus.url),
            prometheus=prometheus,
        )
    finally:
        prometheus.stop()


def _deployed_node(spec: str, config) -> DeployedNode:
    layout = DeployedLayout.load(os.environ.get("LLM_NODE_STACK", "prod"), os.environ.get("LLM_NODE_STACK_OUTPUTS"))
    url = os.environ.get("LLM_NODE_URL") or layout.outputs.get("public_url") or layout.settings.public_url
    ca = os.environ.get("LLM_NODE_CA", "")
    host = testinfra.get_host(spec, ssh_config=config.option.ssh_config,
                              ssh_identity_file=config.option.ssh_identity_file,
                              sudo=config.option.sudo, sudo_user=config.option.sudo_user)
    return DeployedNode(host=host, api_url=url.rstrip("/"), layout=layout,
                        ca_bundle=False if ca == "insecure" else (ca or True),
                        api_key=os.environ.get("LLM_NODE_API_KEY", ""))


def non_loopback_listeners(host) -> set[int]:
    ports = set()
    for spec in host.socket.get_listening_sockets():
        match = re.match(r"tcp://(.+):(\d+)$", spec)
        if match and not (match.group(1).startswith("127.") or match.group(1) == "::1"):
            ports.add(int(match.group(2)))
    return ports


@pytest.fixture(scope="module")
def local_deployment(request):
    """The dev stack deployed on a private Docker daemon by tests/deploy; destroyed after the
    module that uses it (its volumes are kept, as the program says), and the daemon stopped,
    so its engine does not compete with the rest of the session for the CPUs."""
    from tests.deploy import local

    host = testinfra.get_host("local://")
    before = non_loopback_listeners(host)  # this machine's own public listeners (sshd, ...)
    if os.environ.get("LLM_NODE_REUSE_DEPLOYMENT") == "1":  # left by `python -m tests.deploy up`
        attached = local.attach()
        yield attached, before
        attached.close_forwarders()
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # the deploy log and its phase durations, live
        deployment = local.up()
    try:
        yield deployment, before
    finally:
        with capture.global_and_fixture_disabled():
            local.down(deployment)


def _local_deployed_node(request) -> DeployedNode:
    deployment, listeners_before = request.getfixturevalue("local_deployment")
    os.environ["DOCKER_HOST"] = deployment.daemon.url  # the suite's `docker ...` commands go to that daemon
    extra = set(listeners_before) | {int(p) for p in os.environ.get("LLM_NODE_ALLOWED_PORTS", "22").split(",") if p}
    os.environ["LLM_NODE_ALLOWED_PORTS"] = ",".join(str(p) for p in sorted(extra))
    from tests.deploy.stack import OMITTED

    layout = DeployedLayout(deployment.settings, deployment.deployment.outputs, absent=dict(OMITTED))
    gateway = json.loads(subprocess.run(["docker", "-H", deployment.daemon.url, "inspect", layout.container("gateway")],
                                        capture_output=True, check=True, text=True).stdout)[0]
    address = gateway["NetworkSettings"]["Networks"][layout.edge_network]["IPAddress"]
    # No Traefik here: clients reach the gateway container's API port on the edge network
    # (plain HTTP inside the node), through a loopback forwarder into the node's namespace.
    return DeployedNode(host=testinfra.get_host("local://"),
                        api_url=deployment.reach(address, layout.settings.gateway.port), layout=layout)


def _ready(node: DeployedNode) -> DeployedNode:
    if not node.api_key:
        node.create_key()
    models = node.http().get(node.api_url + "/v1/models", headers={"Authorization": f"Bearer {node.api_key}"},
                             timeout=30)
    models.raise_for_status()
    served = [card["id"] for card in models.json()["data"]]
    # the first generate group's model: an embedding model (kind embed) answers no chat
    chat_model = node.layout.settings.engine.spec.served_model_name
    node.model = chat_model if chat_model in served else served[0]
    return node


@pytest.fixture(scope="session")
def remote_node(request):
    """The node given with --hosts."""
    specs = deployed_hosts(request.config)
    if len(specs) > 1:
        pytest.fail("tests/infra checks one node per run: give one --hosts value")
    node = _ready(_deployed_node(specs[0], request.config))
    yield node
    node.revoke_created_key()


@pytest.fixture(scope="module")
def deployed_node(request):
    """The node given with --hosts; without it, the local deployment (unless LLM_NODE_LOCAL_DEPLOY=0)."""
    if deployed_hosts(request.config):
        yield request.getfixturevalue("remote_node")
        return
    if os.environ.get("LLM_NODE_LOCAL_DEPLOY", "1") == "0":
        pytest.skip(NO_DOCKER_HOST)
    # The local deployment sets DOCKER_HOST and LLM_NODE_ALLOWED_PORTS: put the environment back after.
    with mock.patch.dict(os.environ):
        node = _ready(_local_deployed_node(request))
        yield node
        node.revoke_created_key()


@pytest.fixture(scope="session")
def node(request):
    """The deployed node when --hosts is given, otherwise the local one."""
    if deployed_hosts(request.config):
        return request.getfixturevalue("remote_node")
    return request.getfixturevalue("local_node")
