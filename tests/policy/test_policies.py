"""Each CrossGuard policy passes the declared node and catches a crafted violation.

The declared node comes from the real program under the mock runtime; its inputs are
handed to the policies the way CrossGuard does (engine property names, secrets decrypted).
The policies are driven through pulumi_policy's own validation entry points, so the
wrapping in policy/pack.py is exercised, not only the rule functions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pulumi
import pytest
import yaml
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policy import rules
from policy.pack import POLICIES
from stacks.images import DEFAULT_IMAGES, is_pinned
from tests.stacks.engine_groups import three_group_overrides
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, Deployment, run_program

POLICY = {p.name: p for p in POLICIES}
NODES = {
    "dev": ("dev", {}),
    "prod": ("prod", {}),
    "prod-tunnel": ("prod", {"overrides": {"tunnel": {"enabled": True}},
                             "secrets": {"tunnel_token": f"{MOCK_SECRET_MARK}-eyJhIjoiMTIzNDU2Nzg5MDEyMzQ1Njc4OTAifQ"}}
                    ),
    "prod-three-groups": ("prod", {"overrides": three_group_overrides()}),  # two GPU groups and an embedding one
}

Node = list[rules.Resource]


def _opts(create_timeout_seconds: float = 0.0) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=True, aliases=[],
                                 custom_timeouts=PolicyCustomTimeouts(create_timeout_seconds, 0, 0),
                                 additional_secret_outputs=[])


def _seconds(duration: str | None) -> float:
    """A Pulumi custom timeout ("720s", "30m", "2h") in seconds, as the engine hands it to CrossGuard."""
    if not duration:
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def violations(policy_name: str, node: Node, config: dict[str, Any] | None = None) -> list[str]:
    """Messages the named policy reports for the node, through the pulumi_policy API."""
    policy = POLICY[policy_name]
    found: list[str] = []
    report = lambda message, urn=None: found.append(message)  # noqa: E731
    if isinstance(policy, StackValidationPolicy):
        resources = [PolicyResource(r.type, r.props, f"urn:{r.name}", r.name, _opts(), None, None, [], {})
                     for r in node]
        policy.validate(StackValidationArgs(resources, config), report)
    else:
        assert isinstance(policy, ResourceValidationPolicy)
        for r in node:
            policy.validate(ResourceValidationArgs(r.type, r.props, f"urn:{r.name}", r.name,
                                                   _opts(r.create_timeout_seconds), None, config),
                            report)
    return found


def declared_node(deployment: Deployment) -> Node:
    def create_timeout(d) -> float:
        opts = deployment.options.get((d.type, d.name))
        return _seconds(opts.custom_timeouts.create) if opts and opts.custom_timeouts else 0.0
    return [rules.Resource(d.type, d.name, d.props, create_timeout(d)) for d in deployment.declared]


def with_node(name: str, check: Callable[[Node], None]) -> pulumi.Output:
    stack, kwargs = NODES[name]
    return run_program(stack, **kwargs).ready().apply(lambda d: check(declared_node(d)))


def edited(node: Node, resource_name: str, edit: Callable[[dict], None], type_: str = rules.CONTAINER) -> Node:
    """A copy of the node with one resource's props changed."""
    changed = []
    hit = False
    for resource in node:
        if resource.name == resource_name and resource.type == type_:
            props = copy.deepcopy(dict(resource.props))
            edit(props)
            resource = rules.Resource(resource.type, resource.name, props, resource.create_timeout_seconds)
            hit = True
        changed.append(resource)
    assert hit, f"no {type_} named {resource_name}"
    return changed


def set_env(props: dict, entry: str) -> None:
    props["envs"] = [*list(props.get("envs") or []), entry]


# -- every policy passes every declared node ----------------------------------------------------------


@pytest.mark.parametrize("node_name", NODES)
@pytest.mark.parametrize("policy_name", POLICY)
@pulumi.runtime.test
def test_declared_node_complies(policy_name, node_name):
    def check(node: Node):
        assert [r for r in node if r.type == rules.CONTAINER], "no containers declared"
        assert violations(policy_name, node) == []
    return with_node(node_name, check)


# -- and catches a crafted violation ---------------------------------------------------------------------


@pulumi.runtime.test
def test_internal_services_publish_no_host_ports_catches_violations():
    def check(node: Node):
        def published(props):
            props["ports"] = [{"internal": 5432, "external": 5432}]
        found = violations("internal-services-publish-no-host-ports", edited(node, "postgres", published))
        assert len(found) == 1 and found[0].startswith("postgres: joins only internal networks")
        assert "5432" in found[0]

        def host_network(props):
            props["networkMode"] = "host"
        found = violations("internal-services-publish-no-host-ports", edited(node, "redis", host_network))
        assert found == ["redis: uses the host's network: every port it opens is on the host"]

        def publish_all(props):
            props["publishAllPorts"] = True
        assert violations("internal-services-publish-no-host-ports", edited(node, "engine-0", publish_all))
        # Traefik is on the edge network: its ports are legitimate.
        assert any(r.props.get("ports") for r in node if r.name == "traefik")
    return with_node("prod", check)


@pulumi.runtime.test
def test_gpus_exclusive_catches_a_gpu_shared_across_groups_and_a_request_by_count():
    def check(node: Node):
        def on_gpu(*ids):
            def edit(props):
                props["deviceRequests"] = [{"driver": "nvidia", "deviceIds": list(ids), "capabilities": ["gpu"]}]
            return edit
        shared = edited(node, "engine-embed-0", on_gpu("1"))  # chat's second GPU
        found = violations("gpus-exclusive", shared)
        assert len(found) == 1 and "asks for GPU 1, which" in found[0], found
        assert "engine-embed-0" in found[0] and "engine-chat-0" in found[0]  # both holders named

        def by_count(props):
            props["deviceRequests"] = [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
        found = violations("gpus-exclusive", edited(node, "engine-coder-0", by_count))
        assert len(found) == 1 and found[0].startswith("engine-coder-0: asks for GPUs by count (-1)")

        # the quantize job shares its group's GPU: it runs before that group's engines start
        assert [r for r in node if r.type == rules.CONTAINER and r.name == "quantize"
                and r.props["deviceRequests"][0]["deviceIds"] == ["0"]]
        assert violations("gpus-exclusive", node) == []
    return with_node("prod-three-groups", check)


@pulumi.runtime.test
def test_healthcheck_and_restart_policy_catches_violations():
    def check(node: Node):
        def no_healthcheck(props):
            props.pop("healthcheck")
        found = violations("healthcheck-and-restart-policy", edited(node, "gateway", no_healthcheck))
        assert len(found) == 1 and "gateway: no healthcheck" in found[0]

        def disabled_healthcheck(props):
            props["healthcheck"] = {"tests": ["NONE"]}
        assert violations("healthcheck-and-restart-policy", edited(node, "prometheus", disabled_healthcheck))

        def no_restart(props):
            props.pop("restart")
        found = violations("healthcheck-and-restart-policy", edited(node, "redis", no_restart))
        assert found == ["redis: restart policy 'no': use unless-stopped (or always / on-failure)"]

        def restarting_job(props):
            props["restart"] = "always"
        found = violations("healthcheck-and-restart-policy", edited(node, "quantize", restarting_job))
        assert len(found) == 1 and "one-shot job" in found[0]
    return with_node("prod", check)


@pulumi.runtime.test
def test_pinned_images_catches_violations():
    def check(node: Node):
        def latest(props):
            props["name"] = "traefik:latest"
        found = violations("pinned-images", edited(node, "traefik-image", latest, rules.REMOTE_IMAGE))
        assert found == ["traefik-image: name 'traefik:latest' is not pinned: use a version tag (e.g. 1.2.3) "
                         "or a digest, never latest"]

        def untagged(props):
            props["image"] = "redis"
        assert violations("pinned-images", edited(node, "redis", untagged))

        def floating_base(props):
            props["build"]["args"]["VLLM_IMAGE"] = "vllm/vllm-openai:latest"
        found = violations("pinned-images", edited(node, "engine-image", floating_base, rules.BUILT_IMAGE))
        assert len(found) == 1 and "build.args.VLLM_IMAGE" in found[0]

        def mutable_local_tag(props):
            props["imageName"] = "llm-node/gateway:dev"
        assert violations("pinned-images", edited(node, "gateway-image", mutable_local_tag, rules.BUILT_IMAGE))
    return with_node("prod", check)


@pulumi.runtime.test
def test_no_plain_secrets_catches_violations():
    def check(node: Node):
        cases = [
            ("grafana", "GF_SECURITY_ADMIN_PASSWORD=hunter2", "env GF_SECURITY_ADMIN_PASSWORD looks like a secret"),
            ("engine-0", "HF_TOKEN=hf_abcdefghijklmnop", "env HF_TOKEN looks like a secret"),
            ("prometheus", "REMOTE_WRITE=https://user:pa55@metrics.example.com/api",
             "env REMOTE_WRITE holds a URL with a password"),
            ("traefik", "CF_DNS=eyJhIjoiYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoifQ", "env CF_DNS holds a token"),
        ]
        for container, entry, expected in cases:
            found = violations("no-plain-secrets-in-env-or-args",
                               edited(node, container, lambda props, e=entry: set_env(props, e)))
            assert len(found) == 1 and expected in found[0], (container, found)

        def password_flag(props):
            props["command"] = ["redis-server", "--requirepass", "hunter2"]
        found = violations("no-plain-secrets-in-env-or-args", edited(node, "redis", password_flag))
        assert found == ["redis: argument --requirepass passes a secret on the command line "
                         "(visible in ps and docker inspect)"]
        # The gateway's secrets as env (as the node declared them before they became files).
        database_url = "GATEWAY_DATABASE_URL=postgresql://llmnode:s3cret@postgres:5432/llmnode"
        for container, entry in (("gateway", database_url), ("gateway-migrate", database_url),
                                 ("gateway", "GATEWAY_ADMIN_TOKEN=abcdef0123456789")):
            found = violations("no-plain-secrets-in-env-or-args",
                               edited(node, container, lambda props, e=entry: set_env(props, e)))
            assert len(found) == 1 and found[0].startswith(f"{container}: env GATEWAY_"), (container, found)
        # A pack setting can allow one, for a stack that must.
        allowed = edited(node, "gateway", lambda props: set_env(props, database_url))
        assert violations("no-plain-secrets-in-env-or-args", allowed,
                          config={"allowedSecretEnv": ["GATEWAY_DATABASE_URL"]}) == []
        # A pointer is fine only as a path: GATEWAY_SECRETS_DIR=hunter2 is no pointer.
        found = violations("no-plain-secrets-in-env-or-args",
                           edited(node, "gateway", lambda props: set_env(props, "API_TOKEN_FILE=hunter2")))
        assert len(found) == 1
    return with_node("prod-tunnel", check)


def _traefik_static(node: Node) -> dict:
    traefik = next(r for r in node if r.name == "traefik" and r.type == rules.CONTAINER)
    return yaml.safe_load(next(u["content"] for u in traefik.props["uploads"]
                               if u["file"] == "/etc/traefik/traefik.yml"))


@pulumi.runtime.test
def test_traefik_exposed_by_default_catches_violations():
    def check(node: Node):
        assert "docker" not in _traefik_static(node)["providers"]  # routes come from files only

        def rewrite(change: Callable[[dict], None]):
            def edit(props):
                for upload in props["uploads"]:
                    if upload["file"] == "/etc/traefik/traefik.yml":
                        static = yaml.safe_load(upload["content"])
                        change(static)
                        upload["content"] = yaml.safe_dump(static)
            return edit

        exposed = rewrite(lambda s: s["providers"].update(docker={"exposedByDefault": True}))
        found = violations("traefik-exposed-by-default-off", edited(node, "traefik", exposed))
        assert found == ["traefik: Traefik's Docker provider sets exposedByDefault to true: every container "
                         "would be routed"]
        unset = rewrite(lambda s: s["providers"].update(docker={"watch": True}))
        found = violations("traefik-exposed-by-default-off", edited(node, "traefik", unset))
        assert len(found) == 1 and "does not set exposedByDefault" in found[0]

        def cli_override(props):
            props["command"] = ["--providers.docker.exposedByDefault=true"]
        assert violations("traefik-exposed-by-default-off", edited(node, "traefik", cli_override))

        def env_override(props):
            set_env(props, "TRAEFIK_PROVIDERS_DOCKER_EXPOSEDBYDEFAULT=true")
        assert violations("traefik-exposed-by-default-off", edited(node, "traefik", env_override))
    return with_node("dev", check)


@pulumi.runtime.test
def test_no_docker_socket_catches_violations():
    def check(node: Node):
        def read_only_socket(props):  # what stacks/traefik.py did: `:ro` still serves the whole API
            socket = {"hostPath": "/var/run/docker.sock", "containerPath": "/var/run/docker.sock", "readOnly": True}
            props["volumes"] = [*list(props.get("volumes") or []), socket]
        found = violations("no-docker-socket", edited(node, "traefik", read_only_socket))
        assert found == ["traefik: mounts /var/run/docker.sock (the Docker socket): that is the whole Docker API, "
                         "read-only or not"]

        def bind_run_dir(props):
            props["mounts"] = [{"type": "bind", "source": "/run", "target": "/host-run", "readOnly": True}]
        assert violations("no-docker-socket", edited(node, "prometheus", bind_run_dir))

        def docker_host(props):
            set_env(props, "DOCKER_HOST=tcp://socket-proxy:2375")
        assert violations("no-docker-socket", edited(node, "grafana", docker_host))

        def unrelated(props):
            props["mounts"] = [{"type": "bind", "source": "/run/llm-node", "target": "/x"}]
        assert violations("no-docker-socket", edited(node, "prometheus", unrelated)) == []
    return with_node("dev", check)


@pytest.mark.parametrize("reference", [*DEFAULT_IMAGES.values(), "llm-node/gateway:src-0123456789ab",
                                       "nginx", "nginx:latest", "nginx:1", "nginx:stable", "registry:5000/nginx",
                                       "registry:5000/nginx:1.27.3", "nginx@sha256:" + "a" * 64, "nginx:1.27-alpine"])
def test_policy_and_program_agree_on_pinning(reference):
    assert rules.image_is_pinned(reference) == is_pinned(reference)


def test_every_policy_is_mandatory_and_documented():
    from policy.pack import MANDATORY

    assert {p.name for p in POLICIES} == {
        "internal-services-publish-no-host-ports", "healthcheck-and-restart-policy", "pinned-images",
        "no-plain-secrets-in-env-or-args", "traefik-exposed-by-default-off", "no-docker-socket",
        "graceful-stop", "create-timeout-covers-waits", "gpus-exclusive",
        # the kubernetes target (tests/policy/test_k8s_policies.py)
        "k8s-edge-only-external-service", "k8s-probes-and-resources", "k8s-no-privilege", "k8s-pinned-images",
        "k8s-no-secret-env", "k8s-network-policy-for-every-workload"}
    for policy in POLICIES:
        assert policy.enforcement_level == MANDATORY and policy.description and policy.remediation_steps


@pulumi.runtime.test
def test_graceful_stop_catches_violations():
    def check(node: Node):
        def sigkill(props):  # what the provider does without destroy_grace_seconds
            props.pop("destroyGraceSeconds", None)
        found = violations("graceful-stop", edited(node, "gateway", sigkill))
        assert found == ["gateway: no destroy_grace_seconds: every replace and destroy stops it with a 0 s timeout "
                         "(SIGKILL)"]

        def shorter(props):
            props["destroyGraceSeconds"] = props["stopTimeout"] - 1
        found = violations("graceful-stop", edited(node, "postgres", shorter))
        assert len(found) == 1 and "shorter than its own stop time" in found[0]
        # Jobs are not stopped by the provider (it waits for them): no grace needed.
        assert violations("graceful-stop", edited(node, "gateway-migrate", sigkill)) == []
    return with_node("prod", check)


@pulumi.runtime.test
def test_create_timeout_catches_violations():
    def check(node: Node):
        def without_timeout(resource_name: str) -> Node:
            return [r._replace(create_timeout_seconds=0.0) if r.name == resource_name and r.type == rules.CONTAINER
                    else r for r in node]
        for job in ("gateway-migrate", "quantize"):
            found = violations("create-timeout-covers-waits", without_timeout(job))
            assert len(found) == 1 and found[0].startswith(f"{job}: one-shot job without custom_timeouts"), found
        # An engine with a 3600 s start period waits 3720 s: past the provider's 20 minutes, only a
        # declared create timeout covers it.
        def long_start(props):
            props["waitTimeout"] = 3720
        found = violations("create-timeout-covers-waits", edited(without_timeout("engine-0"), "engine-0", long_start))
        assert len(found) == 1 and "does not cover wait_timeout 3720" in found[0]
    return with_node("prod", check)
