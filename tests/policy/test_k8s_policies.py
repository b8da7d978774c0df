"""The kubernetes policies pass the declared k8s-dev and k8s-prod nodes and catch crafted violations.

Driven through pulumi_policy's own validation entry points (tests/policy/test_policies.py's
``violations``), with the resources as CrossGuard sees them.
"""

from __future__ import annotations

from collections.abc import Callable

import pulumi
import pytest

from policy import k8s_rules
from policy.pack import POLICIES
from tests.k8s.groups import two_groups
from tests.k8s.objects import _ints
from tests.policy.test_policies import Node, declared_node, edited, violations
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, run_program

K8S_POLICIES = ("k8s-edge-only-external-service", "k8s-probes-and-resources", "k8s-no-privilege",
                "k8s-pinned-images", "k8s-no-secret-env", "k8s-network-policy-for-every-workload")
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
JOB = "kubernetes:batch/v1:Job"
SERVICE = "kubernetes:core/v1:Service"
CHART = "kubernetes:helm.sh/v4:Chart"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def with_k8s_node(stack: str, check: Callable[[Node], None], **kwargs) -> pulumi.Output:
    def run(d):
        node = [r._replace(props=_ints(r.props)) for r in declared_node(d)]
        assert [r for r in node if r.type in k8s_rules.WORKLOADS], "no workloads declared"
        check(node)
    return run_program(stack, **kwargs).ready().apply(run)


def container(props: dict, index: int = 0) -> dict:
    spec = props["spec"]["template"]["spec"]
    return spec["containers"][index]


NODES = {  # name -> (stack, run_program kwargs)
    "k8s-dev": ("k8s-dev", {}),
    "k8s-prod": ("k8s-prod", {}),
    "k8s-dev-picker-gateway-api": ("k8s-dev", {"overrides": {"kubernetes": {
        "endpoint_picker": "inference-extension", "inference_gateway_class": "kgateway",
        "edge": "gateway-api", "gateway_api_parent": "edge/public"}}}),
    "k8s-prod-external-data": ("k8s-prod", {
        "overrides": {"kubernetes": {"data_stores": "external", "external_data_cidrs": ["10.20.0.0/24"]}},
        "secrets": {"external_database_url": f"postgresql://u:{MOCK_SECRET_MARK}@10.20.0.5/db",
                    "external_redis_url": f"redis://:{MOCK_SECRET_MARK}@10.20.0.6:6379/0"}}),
    # several engine groups (chat + embed), one workload each; on k8s-prod behind the endpoint picker
    "k8s-dev-two-groups": ("k8s-dev", {"overrides": two_groups("k8s-dev")}),
    "k8s-prod-two-groups-picker": ("k8s-prod", {"overrides": two_groups("k8s-prod", picker=True)}),
}


@pytest.mark.parametrize("node_name", NODES)
@pytest.mark.parametrize("policy_name", [p.name for p in POLICIES])  # the Docker rules too
@pulumi.runtime.test
def test_declared_k8s_node_complies(policy_name, node_name):
    assert set(K8S_POLICIES) <= {p.name for p in POLICIES}
    stack, kwargs = NODES[node_name]
    return with_k8s_node(stack, lambda node: _assert_clean(policy_name, node), **kwargs)


def _assert_clean(policy_name: str, node: Node) -> None:
    assert violations(policy_name, node) == []


@pulumi.runtime.test
def test_edge_only_external_service_catches_violations():
    def check(node: Node):
        def load_balancer(props):
            props["spec"]["type"] = "LoadBalancer"
        found = violations("k8s-edge-only-external-service", edited(node, "service-postgres", load_balancer, SERVICE))
        assert found == ["service-postgres: Service of type LoadBalancer outside the edge: only Traefik's Service may "
                         "be LoadBalancer; route through the edge instead"]

        def node_port(props):
            props["spec"]["type"] = "NodePort"
        assert violations("k8s-edge-only-external-service", edited(node, "service-gateway", node_port, SERVICE))
        # The edge's own Service (Traefik's chart label) may be a LoadBalancer.
        def edge(props):
            props["spec"]["type"] = "LoadBalancer"
            props["metadata"]["labels"] = {"app.kubernetes.io/name": "traefik"}
        assert violations("k8s-edge-only-external-service", edited(node, "service-gateway", edge, SERVICE)) == []
        # Another chart asking for one is caught too.
        def other_chart(props):
            props["chart"] = "grafana"
        assert violations("k8s-edge-only-external-service", edited(node, "traefik", other_chart, CHART))
    return with_k8s_node("k8s-prod", check)


@pulumi.runtime.test
def test_probes_and_resources_catches_violations():
    def check(node: Node):
        def no_readiness(props):
            container(props).pop("readinessProbe")
        found = violations("k8s-probes-and-resources", edited(node, "deployment-gateway", no_readiness, DEPLOYMENT))
        assert found == ["deployment-gateway: container gateway: no readinessProbe"]

        def no_limits(props):
            container(props)["resources"].pop("limits")
        found = violations("k8s-probes-and-resources", edited(node, "statefulset-engine", no_limits, STATEFULSET))
        assert found == ["statefulset-engine: container engine: no limits for cpu, memory"]

        def no_memory_request(props):
            container(props)["resources"]["requests"].pop("memory")
        assert violations("k8s-probes-and-resources", edited(node, "job-quantize", no_memory_request, JOB)) == [
            "job-quantize: container quantize: no requests for memory"]
        # Jobs need no probes (they run to completion).
        def job_without_probes(props):
            container(props).pop("readinessProbe", None)
        assert violations("k8s-probes-and-resources", edited(node, "job-quantize", job_without_probes, JOB)) == []
    return with_k8s_node("k8s-prod", check)


@pulumi.runtime.test
def test_no_privilege_catches_violations():
    def check(node: Node):
        cases = [
            (lambda p: container(p)["securityContext"].update(privileged=True), "container redis: privileged"),
            (lambda p: container(p)["securityContext"].pop("allowPrivilegeEscalation"),
             "container redis: allowPrivilegeEscalation is not false"),
            (lambda p: container(p)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
             "container redis: adds capabilities SYS_ADMIN"),
            (lambda p: p["spec"]["template"]["spec"].update(hostNetwork=True), "pod uses hostNetwork"),
            (lambda p: p["spec"]["template"]["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
             "pod mounts the host path '/' (volume root)"),
            (lambda p: container(p)["ports"][0].update(hostPort=6379), "container redis: binds a hostPort"),
        ]
        for edit, expected in cases:
            found = violations("k8s-no-privilege", edited(node, "statefulset-redis", edit, STATEFULSET))
            assert found == [f"statefulset-redis: {expected}"], found
        # The CPU engine's SYS_NICE is the one allowed capability.
        engine = next(r for r in node if r.name == "statefulset-engine")
        assert container(dict(engine.props))["securityContext"]["capabilities"]["add"] == ["SYS_NICE"]
    return with_k8s_node("k8s-dev", check)


@pulumi.runtime.test
def test_k8s_pinned_images_catches_violations():
    def check(node: Node):
        def latest(props):
            container(props)["image"] = "redis:latest"
        found = violations("k8s-pinned-images", edited(node, "statefulset-redis", latest, STATEFULSET))
        assert found == ["statefulset-redis: container redis: image 'redis:latest' is not pinned: use a version tag "
                         "or a digest"]

        def untagged_chart_image(props):
            props["values"]["image"]["tag"] = "latest"
        assert violations("k8s-pinned-images", edited(node, "traefik", untagged_chart_image, CHART))

        def floating_chart(props):
            props["version"] = None
        assert violations("k8s-pinned-images", edited(node, "traefik", floating_chart, CHART)) == [
            "traefik: chart 'traefik' version '' is not pinned"]
    return with_k8s_node("k8s-dev", check)


@pulumi.runtime.test
def test_k8s_no_secret_env_catches_violations():
    def check(node: Node):
        def password_env(props):
            container(props)["env"].append({"name": "POSTGRES_PASSWORD", "value": "hunter2"})
        found = violations("k8s-no-secret-env", edited(node, "statefulset-postgres", password_env, STATEFULSET))
        assert len(found) == 1 and "env POSTGRES_PASSWORD looks like a secret" in found[0]

        def url_env(props):
            container(props)["env"].append({"name": "GATEWAY_DATABASE_URL",
                                            "value": f"postgresql://llmnode:{MOCK_SECRET_MARK}@postgres:5432/db"})
        found = violations("k8s-no-secret-env", edited(node, "deployment-gateway", url_env, DEPLOYMENT))
        assert len(found) == 1 and "holds a URL with a password" in found[0]

        def secret_ref(props):
            container(props)["env"].append({"name": "ADMIN", "valueFrom": {"secretKeyRef": {"name": "gateway",
                                                                                          "key": "x"}}})
        found = violations("k8s-no-secret-env", edited(node, "deployment-gateway", secret_ref, DEPLOYMENT))
        assert found == ["deployment-gateway: container gateway: env ADMIN comes from a Secret: mount the Secret "
                         "as files"]

        def env_from(props):
            container(props)["envFrom"] = [{"secretRef": {"name": "gateway"}}]
        assert violations("k8s-no-secret-env", edited(node, "deployment-gateway", env_from, DEPLOYMENT))

        def password_flag(props):
            container(props)["args"] = ["redis-server", "--requirepass", "hunter2"]
        assert violations("k8s-no-secret-env", edited(node, "statefulset-redis", password_flag, STATEFULSET))
    return with_k8s_node("k8s-dev", check)


@pulumi.runtime.test
def test_network_policy_for_every_workload_catches_violations():
    def check(node: Node):
        without_redis = [r for r in node if not (r.type == NETWORK_POLICY and r.name == "networkpolicy-redis")]
        found = violations("k8s-network-policy-for-every-workload", without_redis)
        assert len(found) == 1 and found[0].startswith("statefulset-redis: no NetworkPolicy selects its pods")

        without_deny = [r for r in node if not (r.type == NETWORK_POLICY and r.name == "networkpolicy-default-deny")]
        found = violations("k8s-network-policy-for-every-workload", without_deny)
        assert len(found) == len([r for r in node if r.type in k8s_rules.WORKLOADS])
        assert all("has no default-deny NetworkPolicy" in message for message in found)

        def relabelled(props):  # a workload whose labels no policy selects any more
            props["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "engine-v2"
        found = violations("k8s-network-policy-for-every-workload",
                           edited(node, "statefulset-engine", relabelled, STATEFULSET))
        assert len(found) == 1 and found[0].startswith("statefulset-engine: no NetworkPolicy selects")
    return with_k8s_node("k8s-prod", check)


def test_the_endpoint_picker_deployment_is_hardened_to_pass_the_pack():
    """The inferencepool chart's EPP Deployment as its template renders it (no resources, no
    securityContext) fails the pack; after the program's transform it passes."""
    from stacks.kubernetes.manifests import harden_chart_workload

    rendered = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "engine-pool-epp", "namespace": "llm-node"},
                "spec": {"template": {"metadata": {"labels": {"inferencepool": "engine-pool-epp"}}, "spec": {
                    "containers": [{"name": "epp",
                                    "image": "registry.k8s.io/gateway-api-inference-extension/epp:v1.0.1",
                                    "readinessProbe": {"grpc": {"port": 9003}},
                                    "livenessProbe": {"grpc": {"port": 9003}}}]}}}}
    node = [k8s_rules.rules.Resource(DEPLOYMENT, "engine-pool-epp", rendered)]
    assert violations("k8s-probes-and-resources", node)
    assert violations("k8s-no-privilege", node)
    hardened = harden_chart_workload(DEPLOYMENT, rendered)
    node = [k8s_rules.rules.Resource(DEPLOYMENT, "engine-pool-epp", hardened)]
    assert violations("k8s-probes-and-resources", node) == violations("k8s-no-privilege", node) == []
    assert harden_chart_workload(DEPLOYMENT, hardened) is None  # nothing left to change
    assert harden_chart_workload("kubernetes:core/v1:Service", {}) is None


@pulumi.runtime.test
def test_only_the_picker_chart_is_transformed():
    def check(d):
        transforms = {name: opts.transforms for (type_, name), opts in d.options.items() if type_ == CHART}
        assert transforms["engine-pool"] and not transforms["traefik"]
    overrides = {"kubernetes": {"endpoint_picker": "inference-extension", "inference_gateway_class": "kgateway"}}
    return run_program("k8s-dev", overrides=overrides).ready().apply(check)
