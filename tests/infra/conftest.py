"""The node under test for the infra suite.

Without ``--hosts`` the suite checks the local node that ``make test`` starts (real CPU vLLM,
gateway, PostgreSQL, Redis, Prometheus) and skips the checks that need a Docker host.
With ``--hosts`` it checks a deployed node and nothing local is started:

    LLM_NODE_URL=https://llm.example.com .venv/bin/pytest tests/infra --hosts=ssh://ops@node

Environment: LLM_NODE_URL (public URL, required with --hosts), LLM_NODE_CA (CA bundle for a
self-signed certificate, or "insecure"), LLM_NODE_API_KEY (else the suite creates a key with
the gateway's admin CLI and revokes it afterwards), LLM_NODE_PREFIX (container name prefix).
"""

from __future__ import annotations

import os

import pytest
import testinfra

from .deployed_node import DeployedLayout, DeployedNode
from .local_node import LocalNode, local_services, start_local_prometheus

NO_DOCKER_HOST = ("no Docker host given: this check needs a node deployed with `pulumi up`; "
                  "run `pytest tests/infra --hosts=ssh://user@node` with LLM_NODE_URL set (docs/verification.md)")


def deployed_hosts(config) -> list[str]:
    return [h for h in (config.option.hosts or "").split(",") if h]


@pytest.fixture(scope="session")
def local_node(engine, gateway, make_key, log_dir, tmp_path_factory) -> LocalNode:
    key = make_key(tier="standard", name="infra-suite")
    prometheus = start_local_prometheus(engine.url, gateway.metrics_url, tmp_path_factory.mktemp("prometheus-infra"), log_dir)
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
    url = os.environ.get("LLM_NODE_URL")
    if not url:
        pytest.fail("LLM_NODE_URL (the node's public https URL) must be set when --hosts is given")
    ca = os.environ.get("LLM_NODE_CA", "")
    host = testinfra.get_host(spec, ssh_config=config.option.ssh_config,
                              ssh_identity_file=config.option.ssh_identity_file,
                              sudo=config.option.sudo, sudo_user=config.option.sudo_user)
    return DeployedNode(host=host, api_url=url.rstrip("/"), layout=DeployedLayout.from_env(),
                        ca_bundle=False if ca == "insecure" else (ca or True),
                        api_key=os.environ.get("LLM_NODE_API_KEY", ""))


@pytest.fixture(scope="session")
def deployed_node(request):
    specs = deployed_hosts(request.config)
    if not specs:
        pytest.skip(NO_DOCKER_HOST)
    if len(specs) > 1:
        pytest.fail("tests/infra checks one node per run: give one --hosts value")
    node = _deployed_node(specs[0], request.config)
    if not node.api_key:
        node.create_key()
    models = node.http().get(node.api_url + "/v1/models", headers={"Authorization": f"Bearer {node.api_key}"}, timeout=30)
    models.raise_for_status()
    node.model = models.json()["data"][0]["id"]
    yield node
    node.revoke_created_key()


@pytest.fixture(scope="session")
def node(request):
    """The deployed node when --hosts is given, otherwise the local one."""
    if deployed_hosts(request.config):
        return request.getfixturevalue("deployed_node")
    return request.getfixturevalue("local_node")
