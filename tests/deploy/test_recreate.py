"""Day 2, for real: destroy the node and create it again on the same Docker host.

The data volumes outlive the destroy (``retain_on_delete``); the re-created stack generates
new passwords. The node must come back healthy on its old data: PostgreSQL accepts the new
password (stacks/entrypoints/postgres-start.sh sets it from the secret file on every start),
the migrate job succeeds on the existing schema, and a key made before the destroy still
works, with its usage records still there.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from stacks.postgres import DATABASE, PASSWORD_FILE, USER
from tests.deploy import local

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]  # two deployments (a fresh machine also builds)


def docker(deployment: local.LocalDeployment, *args: str) -> str:
    return subprocess.run(["docker", "-H", deployment.daemon.url, *args], capture_output=True, text=True,
                          check=True).stdout


def gateway_url(deployment: local.LocalDeployment) -> str:
    settings = deployment.settings
    name = f"{settings.name_prefix}-gateway"
    networks = json.loads(docker(deployment, "inspect", name))[0]["NetworkSettings"]["Networks"]
    return deployment.reach(networks[f"{settings.name_prefix}-edge"]["IPAddress"], settings.gateway.port)


def complete(url: str, key: str) -> requests.Response:
    return requests.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                         json={"model": "tiny-llama", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})


def usage_count(deployment: local.LocalDeployment, key_id: str) -> int:
    out = docker(deployment, "exec", f"{deployment.settings.name_prefix}-postgres", "psql", "-U", USER, "-d", DATABASE,
                 "-Atc", f"SELECT count(*) FROM usage_records WHERE key_id = '{key_id}'")
    return int(out.strip())


def test_a_recreated_node_comes_back_healthy_on_its_retained_volumes(request):
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        first = local.up()
    node = first.daemon
    try:
        prefix = first.settings.name_prefix
        created = json.loads(docker(first, "exec", f"{prefix}-gateway", "python", "-m", "llm_gateway.admin",
                                    "create-key", "--name", "day-2", "--tier", "standard", "--json"))
        key, key_id = created["key"], str(created["id"])
        assert complete(gateway_url(first), key).status_code == 200
        deadline = time.monotonic() + 60
        while usage_count(first, key_id) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        assert usage_count(first, key_id) == 1
        password_before = docker(first, "exec", f"{prefix}-postgres", "cat", PASSWORD_FILE)

        with capture.global_and_fixture_disabled():
            local.down(first, stop_daemon=False)
        assert docker(first, "ps", "-aq", "--filter", "label=llm-node.stack").strip() == "", "containers left"

        with capture.global_and_fixture_disabled():
            second = local.up(node)  # fails if any container does not come back healthy / the job fails
        try:
            assert docker(second, "exec", f"{prefix}-postgres", "cat", PASSWORD_FILE) != password_before, \
                "the re-created stack did not generate a new password (the case to prove)"
            # The key from before the destroy, and its usage row: the retained volume's data.
            answer = complete(gateway_url(second), key)
            assert answer.status_code == 200, answer.text
            deadline = time.monotonic() + 60
            while usage_count(second, key_id) < 2 and time.monotonic() < deadline:
                time.sleep(1)
            assert usage_count(second, key_id) == 2
        finally:
            local.down(second, stop_daemon=False)
    finally:
        node.stop()
