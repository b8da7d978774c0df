"""The kubernetes target under Pulumi's mock runtime: k8s-dev and k8s-prod as declared.

The real program (stacks/__main__.py) runs with the stack files; every check reads what the
engine would receive. Built-in kinds are validated against the Kubernetes OpenAPI schemas of
the version the stack names (kubernetes-validate, strict: unknown or misspelt fields fail);
custom resources (KEDA, Prometheus Operator, Traefik, Gateway API) are checked structurally.
"""

from __future__ import annotations

import ipaddress
import json
import re

import kubernetes_validate
import pulumi
import pytest
import yaml

from prometheus.render import rule_files
from services.launch import GATEWAY_SECRETS_DIR_ENV, engine_args, gateway_env, gateway_process_argv, gateway_secret_file
from stacks.config import load_stack_settings, parse_settings, read_stack_values
from stacks.kubernetes import manifests
from stacks.kubernetes.node import BUILT_IN
from stacks.naming import engine_alias
from tests.k8s.groups import TWO_GROUP_OBJECTS, two_groups
from tests.k8s.netpol import Endpoint, Policies
from tests.k8s.objects import charts, containers, declared_objects, names, objects, pod_templates
from tests.stacks.mock_runtime import (
    MOCK_SECRET_MARK,
    Deployment,
    deep_merge,
    is_secret_value,
    plain_parts,
    run_program,
)

STACKS = ("k8s-dev", "k8s-prod")
BUILT_IN_KINDS = {kind for _, kind in BUILT_IN}

EXPECTED = {
    "k8s-dev": {
        "StatefulSet": {"engine", "postgres", "redis"},
        "Deployment": {"gateway"},
        "Job": {"gateway-migrate"},
        "Service": {"engine", "gateway", "postgres", "redis"},
        "NetworkPolicy": {"default-deny", "dns", "engine", "gateway", "gateway-migrate", "postgres", "redis",
                          "traefik"},
        "PersistentVolumeClaim": {"models", "adapters"},
        "Secret": {"gateway", "gateway-migrate", "postgres", "redis"},
    },
    "k8s-prod": {
        "StatefulSet": {"engine", "postgres", "redis"},
        "Deployment": {"gateway"},
        "Job": {"gateway-migrate", "quantize"},
        "Service": {"engine", "gateway", "postgres", "redis"},
        "NetworkPolicy": {"default-deny", "dns", "engine", "gateway", "gateway-migrate", "postgres", "redis",
                          "traefik", "quantize"},
        "PersistentVolumeClaim": {"models", "adapters"},
        "Secret": {"gateway", "gateway-migrate", "postgres", "redis"},
    },
}


def checked(stack: str, check, **kwargs) -> pulumi.Output:
    return run_program(stack, **kwargs).ready().apply(check)


# -- the exact set of objects ---------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_exact_workloads_services_policies_volumes_secrets(stack):
    def check(d: Deployment):
        found = objects(d)
        for kind, expected in EXPECTED[stack].items():
            assert names(found, kind) == expected, kind
        assert names(found, "DaemonSet") == set()
        assert names(found, "HorizontalPodAutoscaler") == {"gateway"}
        assert names(found, "PodDisruptionBudget") == {"engine", "gateway"}
        assert names(found, "ScaledObject") == {"engine"}
        assert names(found, "ServiceMonitor") == {"engine", "gateway"}
        assert names(found, "PrometheusRule") == {"alerts", "recording"}
        assert set(charts(d)) == {"traefik"}
        # The data stores' own claims (volumeClaimTemplates), on the stack's storage class.
        storage_class = load_stack_settings(stack).kubernetes.storage_class
        claims = {name: [(t["metadata"]["name"], t["spec"]["storageClassName"])
                         for t in found[("StatefulSet", name)]["spec"].get("volumeClaimTemplates", [])]
                  for name in names(found, "StatefulSet")}
        assert claims == {"engine": [], "postgres": [("data", storage_class)], "redis": [("data", storage_class)]}
        # Nothing of the Docker target is declared on a cluster.
        assert not [item for item in d.declared if item.type.startswith("docker:index/container")]
        assert {i.type for i in d.declared if i.type.startswith("docker:")} == {"docker:index/image:Image"}
    return checked(stack, check)


# -- every built-in manifest is valid, strictly, for the stack's Kubernetes version -------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_built_in_manifests_are_valid_in_strict_mode(stack):
    version = load_stack_settings(stack).kubernetes.version

    def check(d: Deployment):
        found = objects(d)
        validated = 0
        for (kind, _name), manifest in found.items():
            if kind in BUILT_IN_KINDS:
                kubernetes_validate.validate(manifest, version, strict=True)
                validated += 1
        assert validated >= 25
    return checked(stack, check)


def test_strict_validation_rejects_a_misspelt_field():
    """The check above can fail: a typo in a pod spec is an error in strict mode only."""
    settings = load_stack_settings("k8s-dev")
    plan = manifests.build(settings, _images(), _secrets())
    deployment = next(m for m in plan.manifests if m.kind == "Deployment").manifest
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    kubernetes_validate.validate(deployment, settings.kubernetes.version, strict=False)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, settings.kubernetes.version, strict=True)


def test_chart_image_parts():
    assert manifests.image_parts("traefik:v3.6.8") == ("docker.io", "traefik", "v3.6.8")
    assert manifests.image_parts("registry.local:5000/mirror/traefik:v3.6.8") == (
        "registry.local:5000", "mirror/traefik", "v3.6.8")


def _images() -> manifests.Images:
    return manifests.Images(engines={"cpu": "r/engine-cpu:src-000000000000", "cuda": "r/engine-cuda:src-000000000000"},
                            gateway="r/gateway:src-000000000000",
                            quantize="r/quantize:src-000000000000", postgres="postgres:17.6", redis="redis:7.4.5",
                            traefik="traefik:v3.6.8")


def _secrets() -> manifests.SecretValues:
    return manifests.SecretValues(*(f"{MOCK_SECRET_MARK}-{i}" for i in range(6)))


# -- same launch code as the Docker target, token for token ------------------------------------------------


SAME_LAUNCH = {  # name -> (stack, overrides): the stacks as they are, and with two engine groups
    "k8s-dev": ("k8s-dev", {}),
    "k8s-prod": ("k8s-prod", {}),
    "k8s-dev-two-groups": ("k8s-dev", two_groups("k8s-dev")),
    "k8s-prod-two-groups": ("k8s-prod", two_groups("k8s-prod")),
}


@pytest.mark.parametrize("variant", SAME_LAUNCH)
@pulumi.runtime.test
def test_engine_command_and_gateway_env_are_the_docker_targets(variant):
    """The same stack on target docker: every engine group's argv and env, the gateway's argv and env
    agree; only the gateway's engine locations differ (per-pod DNS names instead of Docker aliases)."""
    stack, overrides = SAME_LAUNCH[variant]
    docker_run = run_program(stack, overrides=overrides | {"target": "docker", "kubernetes": None})
    settings = parse_settings(deep_merge(read_stack_values(stack), overrides), stack)
    several = len(settings.engines) > 1

    def compare(both):
        docker_d, k8s_d = both
        found = objects(k8s_d)
        assert names(found, "StatefulSet") - {"postgres", "redis"} == {
            manifests.engine_name(group.group) for group in settings.engines}
        for group in settings.engines:
            docker_engine = docker_d.container(engine_alias(0, group.group))
            workload = found[("StatefulSet", manifests.engine_name(group.group))]
            k8s_engine = workload["spec"]["template"]["spec"]["containers"][0]
            assert k8s_engine["args"] == docker_engine.props["command"] == engine_args(group.spec)
            assert {e["name"]: e["value"] for e in k8s_engine["env"]} == docker_engine.env

        docker_gateway = docker_d.container("gateway")
        k8s_gateway = found[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]
        assert k8s_gateway["command"] == docker_gateway.props["entrypoints"] == gateway_process_argv("python")
        k8s_env = {e["name"]: e["value"] for e in k8s_gateway["env"]}
        differing = {k for k in k8s_env.keys() | docker_gateway.env.keys()
                     if k8s_env.get(k) != docker_gateway.env.get(k)}
        assert differing == ({"GATEWAY_ENGINES", "GATEWAY_EMBEDDING_ENGINES"} if several else {"GATEWAY_ENGINES"})
        secrets_dir = {GATEWAY_SECRETS_DIR_ENV: manifests.SECRETS_DIR}
        assert k8s_env == gateway_env(manifests.gateway_spec(settings)) | secrets_dir
        ns, replicas = settings.kubernetes.namespace, range(settings.kubernetes.engine_max_replicas)
        if several:  # generate groups in GATEWAY_ENGINES, embedding groups in GATEWAY_EMBEDDING_ENGINES, as on Docker
            assert docker_gateway.env["GATEWAY_ENGINES"] == "http://engine-chat-0:8000" + (
                ",http://engine-chat-1:8000" if stack == "k8s-prod" else "")
            assert docker_gateway.env["GATEWAY_EMBEDDING_ENGINES"] == "http://engine-embed-0:8000"
            assert k8s_env["GATEWAY_ENGINES"].split(",") == [
                f"http://engine-chat-{i}.engine-chat.{ns}.svc.cluster.local:8000" for i in replicas]
            assert k8s_env["GATEWAY_EMBEDDING_ENGINES"].split(",") == [
                f"http://engine-embed-{i}.engine-embed.{ns}.svc.cluster.local:8000" for i in replicas]
        else:
            assert k8s_env["GATEWAY_ENGINES"].split(",") == [
                f"http://engine-{i}.engine.{ns}.svc.cluster.local:8000" for i in replicas]
        # The migration job: the Docker job's argv.
        migrate = found[("Job", "gateway-migrate")]["spec"]["template"]["spec"]["containers"][0]
        docker_migrate = docker_d.container("gateway-migrate")
        assert migrate["command"] == docker_migrate.props["entrypoints"] + docker_migrate.props["command"]
        if settings.quantize is not None:
            quantize = found[("Job", "quantize")]["spec"]["template"]["spec"]["containers"][0]
            assert quantize["args"] == docker_d.container("quantize").props["command"]
    return pulumi.Output.all(docker_run.ready(), run_program(stack, overrides=overrides).ready()).apply(compare)


# -- several engine groups: one workload per group ---------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_two_engine_groups_are_two_workloads(stack):
    """A chat (generate) and an embed group: each its own StatefulSet, headless Service, PDB, KEDA scaler,
    ServiceMonitor and NetworkPolicy; the gateway lists both; strictly valid; GPUs by each group's device."""
    overrides = two_groups(stack)
    settings = parse_settings(deep_merge(read_stack_values(stack), overrides), stack)
    k8s = settings.kubernetes
    per_group = {"engine-chat": settings.group("chat"), "engine-embed": settings.group("embed")}

    def check(d: Deployment):
        found = objects(d)
        for kind, expected in EXPECTED[stack].items():  # the one-group stack's objects, "engine" per group
            if "engine" in expected:
                expected = expected - {"engine"} | TWO_GROUP_OBJECTS[kind]
            assert names(found, kind) == expected, kind
        for kind in ("PodDisruptionBudget", "ScaledObject", "ServiceMonitor"):
            assert names(found, kind) == TWO_GROUP_OBJECTS[kind] | ({"gateway"} if kind != "ScaledObject" else set())
        assert names(found, "HorizontalPodAutoscaler") == {"gateway"}
        for (kind, _), manifest in found.items():
            if kind in BUILT_IN_KINDS:
                kubernetes_validate.validate(manifest, k8s.version, strict=True)
        for name, group in per_group.items():
            workload = found[("StatefulSet", name)]["spec"]
            # each selector (workload, Service, PDB) picks its own group's pods and no other group's
            for other in per_group:
                other_pods = found[("StatefulSet", other)]["spec"]["template"]["metadata"]["labels"]
                for selector in (workload["selector"]["matchLabels"], found[("Service", name)]["spec"]["selector"],
                                 found[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"]):
                    assert (selector.items() <= other_pods.items()) == (other == name), (name, other)
            assert workload["serviceName"] == name and found[("Service", name)]["spec"]["clusterIP"] == "None"
            assert found[("Service", name)]["metadata"]["labels"]["llm-node.io/job"] == "vllm"  # the rules' job
            scaled = found[("ScaledObject", name)]["spec"]
            assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
            (trigger,) = scaled["triggers"]
            query = trigger["metadata"]["query"]
            assert _metric_names(query) == {"vllm:num_requests_waiting"}
            assert f'model_name="{group.spec.served_model_name}"' in query and f'namespace="{k8s.namespace}"' in query
            assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (k8s.engine_min_replicas,
                                                                              k8s.engine_max_replicas)
            engine = workload["template"]["spec"]["containers"][0]
            assert engine["args"] == engine_args(group.spec)
            # GPU limits by the group's device: the chat group on k8s-prod (cuda), never the CPU embed group
            gpus = engine["resources"]["limits"].get("nvidia.com/gpu")
            assert gpus == (str(k8s.gpus_per_engine) if group.spec.device == "cuda" else None), name
            assert ("tolerations" in workload["template"]["spec"]) == (group.spec.device == "cuda")
            # ... and the engine image built for that device
            assert f"/engine-{group.spec.device}:" in engine["image"], engine["image"]
        gateway = found[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in gateway["env"]}
        assert env["GATEWAY_ENGINES"].split(",") == manifests.engine_urls(k8s, settings.group("chat"))
        assert env["GATEWAY_EMBEDDING_ENGINES"].split(",") == manifests.engine_urls(k8s, settings.group("embed"))
        assert env["GATEWAY_EMBEDDING_ENGINES"].startswith(f"http://engine-embed-0.engine-embed.{k8s.namespace}.svc")
        assert d.outputs["internal_endpoints"]["embedding_engines"] == manifests.engine_urls(
            k8s, settings.group("embed"))
    return checked(stack, check, overrides=overrides)


def test_the_quantize_job_comes_before_the_group_it_prepares_only():
    overrides = two_groups("k8s-prod")
    settings = parse_settings(deep_merge(read_stack_values("k8s-prod"), overrides), "k8s-prod")
    plan = {m.key: m for m in manifests.build(settings, _images(), _secrets()).manifests}
    assert "job-quantize" in plan["statefulset-engine-chat"].depends_on
    assert "job-quantize" not in plan["statefulset-engine-embed"].depends_on
    quantize = plan["job-quantize"].manifest["spec"]["template"]["spec"]["containers"][0]
    assert quantize["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the chat group's device
    # the gateway rolls out after every group's engines
    assert {"statefulset-engine-chat", "statefulset-engine-embed"} <= set(plan["deployment-gateway"].depends_on)


# -- GPUs, probes, shared memory ---------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_gpu_limits_in_prod_only(stack):
    def check(d: Deployment):
        found = objects(d)
        gpu_users = {path: c["resources"]["limits"]["nvidia.com/gpu"] for path, c in containers(found)
                     if "nvidia.com/gpu" in c["resources"].get("limits", {})}
        if stack == "k8s-prod":
            assert gpu_users == {"StatefulSet/engine/engine": "1", "Job/quantize/quantize": "1"}
            pod = found[("StatefulSet", "engine")]["spec"]["template"]["spec"]
            assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert gpu_users == {}
    return checked(stack, check)


@pulumi.runtime.test
def test_engine_pod_shape():
    settings = load_stack_settings("k8s-prod")

    def check(d: Deployment):
        found = objects(d)
        pod = found[("StatefulSet", "engine")]["spec"]["template"]["spec"]
        engine = pod["containers"][0]
        shm = next(v for v in pod["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{settings.engine.shm_size_mb}Mi"}
        assert {"name": "shm", "mountPath": "/dev/shm"} in engine["volumeMounts"]
        # The start-up probe covers the model's load: start period / period.
        startup = engine["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= settings.engine.health_start_period_seconds
        assert startup["httpGet"]["path"] == engine["readinessProbe"]["httpGet"]["path"] == "/health"
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"models", "adapters"}
        anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert found[("PodDisruptionBudget", "engine")]["spec"]["maxUnavailable"] == 1
        assert found[("PodDisruptionBudget", "gateway")]["spec"]["minAvailable"] == 1
        assert found[("Service", "engine")]["spec"]["clusterIP"] == "None"
        assert found[("PersistentVolumeClaim", "models")]["spec"]["accessModes"] == ["ReadWriteMany"]
    return checked("k8s-prod", check)


# -- secrets: only in Secrets, mounted as files -------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_no_secret_value_outside_secrets(stack):
    def check(d: Deployment):
        for item in declared_objects(d):
            if item.props["kind"] == "Secret":
                assert is_secret_value(item.inputs["stringData"]), item.name
                continue
            leaked = [leaf for leaf in plain_parts(item.inputs) if MOCK_SECRET_MARK in str(leaf)]
            assert leaked == [], item.name
            assert not _holds_secret(item.inputs), f"{item.name} holds a secret outside a Secret"
        for chart in charts(d).values():
            assert MOCK_SECRET_MARK not in json.dumps(chart)
        for _, container in containers(objects(d)):
            for entry in container.get("env", []):
                assert "valueFrom" not in entry and MOCK_SECRET_MARK not in entry.get("value", "")
        assert MOCK_SECRET_MARK not in json.dumps([str(p) for p in plain_parts(d.outputs)])
        # The gateway reads its three secrets as files from GATEWAY_SECRETS_DIR.
        found = objects(d)
        secret = found[("Secret", "gateway")]
        assert set(secret["stringData"]) == {gateway_secret_file(f) for f in ("database_url", "redis_url",
                                                                              "admin_token")}
        assert all(MOCK_SECRET_MARK in value for value in secret["stringData"].values())
        pod = found[("Deployment", "gateway")]["spec"]["template"]["spec"]
        mount = pod["containers"][0]["volumeMounts"][0]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert mount["mountPath"] == env[GATEWAY_SECRETS_DIR_ENV] and mount["readOnly"] is True
        assert pod["volumes"][0]["secret"]["secretName"] == "gateway"
    return checked(stack, check)


def _holds_secret(value) -> bool:
    if is_secret_value(value):
        return True
    if isinstance(value, dict):
        return any(_holds_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_secret(v) for v in value)
    return False


# -- isolation: who reaches whom -----------------------------------------------------------------------------


PICKER = {"kubernetes": {"endpoint_picker": "inference-extension", "inference_gateway_class": "kgateway"}}
GATEWAY_API_EDGE = {"kubernetes": {"edge": "gateway-api", "gateway_api_parent": "edge/public"}}
EXTERNAL = {"kubernetes": {"data_stores": "external", "external_data_cidrs": ["10.20.0.0/24"],
                           "external_redis_port": 6380}}
EXTERNAL_SECRETS = {"external_database_url": f"postgresql://llmnode:{MOCK_SECRET_MARK}-db@10.20.0.5:5432/llmnode",
                    "external_redis_url": f"rediss://:{MOCK_SECRET_MARK}-redis@10.20.0.6:6380/0"}
HUB_ONLINE = {"engine": {"hf_hub_offline": False}}  # the engine may download from the hub
VARIANTS = {  # name -> (stack, overrides, secrets)
    "k8s-dev": ("k8s-dev", {}, {}),
    "k8s-prod": ("k8s-prod", {}, {}),
    "k8s-dev-picker": ("k8s-dev", PICKER, {}),
    "k8s-prod-gateway-api-picker": ("k8s-prod", {"kubernetes": {**PICKER["kubernetes"],
                                                                **GATEWAY_API_EDGE["kubernetes"]}}, {}),
    "k8s-prod-external-data": ("k8s-prod", EXTERNAL, EXTERNAL_SECRETS),
    "k8s-dev-hub-online": ("k8s-dev", HUB_ONLINE, {}),
    # several engine groups: each reachable from the gateway (the picked one from the picker) only
    "k8s-dev-two-groups": ("k8s-dev", two_groups("k8s-dev"), {}),
    "k8s-prod-two-groups-picker": ("k8s-prod", two_groups("k8s-prod", picker=True), {}),
}


def engine_workloads(settings) -> dict[str, object]:
    """Engine workload name -> its group (``engine`` for the default group, ``engine-<group>``)."""
    return {manifests.engine_name(group.group): group for group in settings.engines}


def cluster(d: Deployment, settings) -> dict[str, Endpoint]:
    """Our pods (from the declared workloads and the charts' documented labels) and the world around them."""
    k8s = settings.kubernetes
    ns = k8s.namespace
    found = objects(d)
    pods: dict[str, Endpoint] = {}
    for i, (kind, name, _pod) in enumerate(pod_templates(found)):
        labels = found[(kind, name)]["spec"]["template"]["metadata"]["labels"]
        pods[name] = Endpoint(name, ns, labels, ip=f"10.1.0.{i + 10}")
    if k8s.edge == "traefik":
        pods["traefik"] = Endpoint("traefik", ns, {"app.kubernetes.io/name": "traefik",
                                                   "app.kubernetes.io/instance": f"traefik-{ns}"}, ip="10.1.1.1")
    else:
        parent_ns = k8s.gateway_api_parent.split("/")[0]
        pods["edge-proxy"] = Endpoint("edge-proxy", parent_ns, {"app": "edge-proxy"}, ip="10.1.1.2")
    if k8s.endpoint_picker == "inference-extension":
        (pool,) = charts(d).keys() - {"traefik"}  # the chart's release: its picker's pods are "<release>-epp"
        pods["epp"] = Endpoint("epp", ns, {"inferencepool": f"{pool}-epp"}, ip="10.1.1.3")
        pods["inference-gateway"] = Endpoint("inference-gateway", ns, {
            "gateway.networking.k8s.io/gateway-name": "inference-gateway"}, ip="10.1.1.4")
        pods["mesh-control-plane"] = Endpoint("mesh-control-plane", "kgateway-system", {"app": "kgateway"},
                                              ip="10.1.5.1")
    pods["prometheus"] = Endpoint("prometheus", k8s.monitoring_namespace,
                                  {"app.kubernetes.io/name": "prometheus"}, ip="10.1.2.1")
    pods["kube-dns"] = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, ip="10.1.3.1")
    pods["other-tenant"] = Endpoint("other-tenant", "tenant-b", {"app": "whatever"}, ip="10.1.4.1")
    pods["internet"] = Endpoint("internet", None, ip="203.0.113.7")
    pods["api-server"] = Endpoint("api-server", None, ip="192.168.10.1")
    pods["hf-hub"] = Endpoint("hf-hub", None, ip="198.51.100.20")
    if k8s.data_stores == "external":
        pods["external-db"] = Endpoint("external-db", None, ip="10.20.0.5")
    return pods


LISTENING = {  # (port, protocol) each endpoint listens on (every engine workload: engine, engine-<group>)
    "engine": [(8000, "TCP")], "engine-chat": [(8000, "TCP")], "engine-embed": [(8000, "TCP")],
    "gateway": [(8080, "TCP"), (9101, "TCP")], "postgres": [(5432, "TCP")],
    "redis": [(6379, "TCP")], "traefik": [(8000, "TCP"), (8443, "TCP"), (9100, "TCP")],
    "prometheus": [(9090, "TCP")], "kube-dns": [(53, "UDP"), (53, "TCP")], "other-tenant": [(8080, "TCP")],
    "api-server": [(443, "TCP"), (6443, "TCP")], "hf-hub": [(443, "TCP")], "gateway-migrate": [], "quantize": [],
    "internet": [], "edge-proxy": [(443, "TCP")], "epp": [(9002, "TCP"), (9090, "TCP")],
    "inference-gateway": [(80, "TCP")], "mesh-control-plane": [(9977, "TCP")],
    "external-db": [(5432, "TCP"), (6380, "TCP")],
}
OURS = {"engine", "engine-chat", "engine-embed", "gateway", "gateway-migrate", "postgres", "redis", "quantize",
        "traefik", "epp", "inference-gateway"}


def api_server_egress(source: str, pods: dict[str, Endpoint]) -> set[tuple[str, str, int, str]]:
    """The API server's address is the cluster's, unknown to the program: egress to it is "any
    address on 443/6443", which (ipBlock read conservatively) includes any pod listening there."""
    return {(source, name, port, proto) for name in pods if name != source
            for port, proto in LISTENING[name] if port in manifests.API_SERVER_PORTS}


def intended_flows(pods: dict[str, Endpoint], settings) -> set[tuple[str, str, int, str]]:
    """The Docker networks' isolation, as flows (source, destination, port, protocol)."""
    k8s = settings.kubernetes
    picker = k8s.endpoint_picker == "inference-extension"
    outside = {name for name in pods if name not in OURS}
    if k8s.data_stores == "in-cluster":
        flows = {("gateway", "postgres", 5432, "TCP"), ("gateway", "redis", 6379, "TCP"),
                 ("gateway-migrate", "postgres", 5432, "TCP")}
    else:
        flows = {("gateway", "external-db", 5432, "TCP"), ("gateway", "external-db", 6380, "TCP"),
                 ("gateway-migrate", "external-db", 5432, "TCP")}
    engines = engine_workloads(settings)
    picked = "engine-chat" if len(engines) > 1 else "engine"  # the generate group (the only one with a picker)
    flows |= {("prometheus", "gateway", 9101, "TCP")}  # metrics: only Prometheus
    flows |= {("prometheus", engine, 8000, "TCP") for engine in engines}
    if k8s.edge == "traefik":
        flows |= {("traefik", "gateway", 8080, "TCP"), ("prometheus", "traefik", 9100, "TCP")}
        flows |= api_server_egress("traefik", pods)  # the Ingress watch; ACME over https
        flows |= {(source, "traefik", port, "TCP") for source in outside for port in (8000, 8443)}  # the edge
    else:
        flows |= {("edge-proxy", "gateway", 8080, "TCP")}  # the shared Gateway's namespace only
    if picker:
        flows |= {("gateway", "inference-gateway", 80, "TCP"),
                  ("inference-gateway", picked, 8000, "TCP"), ("inference-gateway", "epp", 9002, "TCP"),
                  ("epp", picked, 8000, "TCP"), ("prometheus", "epp", 9090, "TCP")}
        # the other groups (embeddings) the gateway reaches directly
        flows |= {("gateway", engine, 8000, "TCP") for engine in engines if engine != picked}
        flows |= api_server_egress("epp", pods)  # it watches pods and its InferencePool
        # The inference gateway's proxy talks to its control plane in another namespace (any pod there).
        flows |= {("inference-gateway", name, port, proto) for name, pod in pods.items()
                  if pod.namespace not in (None, k8s.namespace) for port, proto in LISTENING[name]}
    else:
        flows |= {("gateway", engine, 8000, "TCP") for engine in engines}
    flows |= {(source, "kube-dns", 53, proto) for source in pods if source in OURS for proto in ("UDP", "TCP")}
    for engine, group in engines.items():
        if not group.spec.hf_hub_offline:
            # Downloads: https to public addresses only (never a private range: no pod, no API server).
            private = [ipaddress.ip_network(cidr) for cidr in manifests.PRIVATE_RANGES]
            flows |= {(engine, name, 443, "TCP") for name, pod in pods.items()
                      if pod.namespace is None and (443, "TCP") in LISTENING[name]
                      and not any(ipaddress.ip_address(pod.ip) in net for net in private)}
    return flows


@pytest.mark.parametrize("variant", VARIANTS)
@pulumi.runtime.test
def test_network_policies_allow_exactly_the_intended_flows(variant):
    stack, overrides, secrets = VARIANTS[variant]
    settings = parse_settings(deep_merge(read_stack_values(stack), overrides), stack, secrets_present=list(secrets))

    def check(d: Deployment):
        policies = Policies(objects(d).values())
        pods = cluster(d, settings)
        allowed = set()
        for source in pods.values():
            for destination in pods.values():
                if (source.name not in OURS and destination.name not in OURS) or source is destination:
                    continue  # flows between outside endpoints are not this stack's
                for port, protocol in LISTENING[destination.name]:
                    if policies.can_reach(source, destination, port, protocol):
                        allowed.add((source.name, destination.name, port, protocol))
        expected = intended_flows(pods, settings)
        assert {f[:2] for f in expected} <= {(a, b) for a in pods for b in pods}
        assert allowed - expected == set(), "unintended flows"
        assert expected - allowed == set(), "intended flows blocked"
        # The issue's statements, spelled out: data stores and engines only from the gateway
        # (or, with the picker, its inference gateway and picker); metrics only from Prometheus.
        engines = [(engine, 8000) for engine in engine_workloads(settings)]
        picker = settings.kubernetes.endpoint_picker != "none"
        picked = manifests.engine_name(settings.engine.group) if picker else None
        assert {name for name, _ in engines} <= set(pods)
        for store, port in (("postgres", 5432), ("redis", 6379), *engines, ("external-db", 5432)):
            if store not in pods:
                continue
            reachers = {s for s in pods if policies.can_reach(pods[s], pods[store], port)
                        and (pods[store].namespace is not None or s in OURS)}  # outside: only our pods are ours
            assert reachers <= {"gateway", "gateway-migrate", "prometheus", "inference-gateway", "epp"}, store
            if store in engine_workloads(settings) and store != picked:  # no picker in front: the gateway only
                assert reachers == {"gateway", "prometheus"}, store
        assert {s for s in pods if policies.can_reach(pods[s], pods["gateway"], 9101)} == {"prometheus"}
    return checked(stack, check, overrides=overrides, secrets=secrets)


@pulumi.runtime.test
def test_external_data_stores():
    """kubernetes.data_stores: external: no PostgreSQL/Redis in the cluster, their URLs (Pulumi
    secrets) only in the gateway's Secrets, egress to their addresses only."""
    def check(d: Deployment):
        found = objects(d)
        assert names(found, "StatefulSet") == {"engine"}
        assert names(found, "Service") == {"engine", "gateway"}
        assert names(found, "Secret") == {"gateway", "gateway-migrate"}
        assert names(found, "NetworkPolicy") == {"default-deny", "dns", "engine", "gateway", "gateway-migrate",
                                                 "traefik", "quantize"}
        assert found[("Secret", "gateway")]["stringData"]["gateway_database_url"] == \
            EXTERNAL_SECRETS["external_database_url"]
        assert set(found[("Secret", "gateway-migrate")]["stringData"]) == {"gateway_database_url"}
        assert not [i for i in d.declared if i.type == "random:index/randomPassword:RandomPassword"
                    and i.name in ("postgres-password", "redis-password")]
        for item in declared_objects(d):
            if item.props["kind"] != "Secret":
                assert not _holds_secret(item.inputs) and MOCK_SECRET_MARK not in json.dumps(
                    [str(leaf) for leaf in plain_parts(item.inputs)]), item.name
            else:
                assert is_secret_value(item.inputs["stringData"])
        for (kind, _), manifest in found.items():
            if kind in BUILT_IN_KINDS:
                kubernetes_validate.validate(manifest, "1.33", strict=True)
    return checked("k8s-prod", check, overrides=EXTERNAL, secrets=EXTERNAL_SECRETS)


def test_reachability_function_sees_a_missing_policy():
    """Without the default deny, the data stores' egress is open: the matrix test would fail."""
    settings = load_stack_settings("k8s-dev")
    plan = manifests.build(settings, _images(), _secrets())
    policies = [m.manifest for m in plan.manifests if m.kind == "NetworkPolicy"]
    pods = {"redis": Endpoint("redis", "llm-node-dev", manifests.labels("redis", settings.name_prefix)),
            "internet": Endpoint("internet", None, ip="203.0.113.7"),
            "engine": Endpoint("engine", "llm-node-dev", manifests.labels("engine", settings.name_prefix)),
            "gateway": Endpoint("gateway", "llm-node-dev", manifests.labels("gateway", settings.name_prefix))}
    full = Policies(policies)
    assert not full.can_reach(pods["engine"], pods["internet"], 443)
    assert full.can_reach(pods["gateway"], pods["engine"], 8000)
    assert not full.can_reach(pods["engine"], pods["redis"], 6379)
    # The DNS policy alone still isolates every pod's egress (it selects them all).
    dns_only = Policies([p for p in policies if p["metadata"]["name"] not in ("default-deny", "engine")])
    assert not dns_only.can_reach(pods["engine"], pods["internet"], 443)
    # Drop it too: the engine's egress is open.
    weaker = Policies([p for p in policies if p["metadata"]["name"] not in ("default-deny", "engine", "dns")])
    assert weaker.can_reach(pods["engine"], pods["internet"], 443)
    assert not weaker.can_reach(pods["engine"], pods["redis"], 6379)  # Redis' own ingress policy still holds
    no_redis_policy = Policies([p for p in policies if p["metadata"]["name"] not in ("default-deny", "engine",
                                                                                      "dns", "redis")])
    assert no_redis_policy.can_reach(pods["engine"], pods["redis"], 6379)


# -- autoscaling ---------------------------------------------------------------------------------------------


def _metric_names(promql: str) -> set[str]:
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", promql)) - {"sum", "rate", "avg", "max"}


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_keda_scales_the_engines_on_the_queue(stack):
    settings = load_stack_settings(stack)

    def check(d: Deployment):
        found = objects(d)
        scaled = found[("ScaledObject", "engine")]
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled["spec"]
        target = spec["scaleTargetRef"]
        assert (target["kind"], target["name"]) in found and target["apiVersion"] == "apps/v1"
        assert spec["minReplicaCount"] == settings.kubernetes.engine_min_replicas
        assert spec["maxReplicaCount"] == settings.kubernetes.engine_max_replicas
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        # Minutes-long model loads: one pod per start period up, a long quiet window down.
        assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": min(
            settings.engine.health_start_period_seconds, 1800)}]
        # A minute of sustained queue before a replica is added (a scrape blip adds nothing).
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 60
        # The HPA's scale-down window is the setting (cooldownPeriod would only matter scaling to 0).
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == \
            settings.kubernetes.scale_down_stabilization_seconds >= 300
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold", "activationThreshold"}
        assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA metadata is map[string]string
        assert _metric_names(trigger["metadata"]["query"]) == {"vllm:num_requests_waiting"}
        assert f'namespace="{settings.kubernetes.namespace}"' in trigger["metadata"]["query"]
        # The StatefulSet's replicas belong to KEDA after creation.
        assert d.options[("kubernetes:apps/v1:StatefulSet", "statefulset-engine")].ignore_changes == ["spec.replicas"]
    return checked(stack, check)


@pulumi.runtime.test
def test_the_gateway_autoscaler_s_bounds_come_from_config():
    """Non-default kubernetes.gateway_* values reach the HPA (and the Deployment's first size)."""
    overrides = {"kubernetes": {"gateway_min_replicas": 4, "gateway_max_replicas": 9,
                                "gateway_cpu_target_percent": 55}}

    def check(d: Deployment):
        found = objects(d)
        spec = found[("HorizontalPodAutoscaler", "gateway")]["spec"]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (4, 9)
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
        assert spec["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 55}}}]
        assert found[("Deployment", "gateway")]["spec"]["replicas"] == 4
        # The stack file says otherwise (2 to 3, 70 %): these numbers came from the overrides.
        own = load_stack_settings("k8s-dev").kubernetes
        assert (own.gateway_min_replicas, own.gateway_max_replicas, own.gateway_cpu_target_percent) == (2, 3, 70)
    return checked("k8s-dev", check, overrides=overrides)


def test_the_keda_metric_is_one_the_rules_already_use():
    """Cheap check (no engine): the alert rules, tested against the real engine's metrics, use it too."""
    used = set(re.findall(r"vllm:[a-z_]+", "\n".join(rule_files().values())))
    settings = load_stack_settings("k8s-dev")
    query = manifests.autoscaling_query(settings, settings.engine)
    assert _metric_names(query) <= used


@pytest.mark.engine
@pytest.mark.parametrize("group", ["chat", "embed"])
def test_the_keda_metric_is_exported_by_the_real_engine(group, request):
    """Each group's trigger (a two-group k8s-dev: generate and embed) names a metric the real CPU
    vLLM of that kind exports, with the model_name label value the query filters on."""
    settings = parse_settings(deep_merge(read_stack_values("k8s-dev"), two_groups("k8s-dev")), "k8s-dev")
    engine = request.getfixturevalue("engine" if group == "chat" else "embed_engine")
    query = manifests.autoscaling_query(settings, settings.group(group))
    text = engine.metrics_text()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    (metric,) = _metric_names(query)
    assert metric in exported, sorted(m for m in exported if m.startswith("vllm:"))
    (model,) = re.findall(r'model_name="([^"]+)"', query)
    assert model == engine.model
    assert any(line.startswith(metric) and f'model_name="{model}"' in line for line in text.splitlines()), \
        [line for line in text.splitlines() if line.startswith(metric)]


# -- observability and edge custom resources ---------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_monitoring_resources(stack):
    settings = load_stack_settings(stack)

    def check(d: Deployment):
        found = objects(d)
        for name, port in (("engine", "http"), ("gateway", "metrics")):
            monitor = found[("ServiceMonitor", name)]
            assert monitor["metadata"]["labels"]["release"] == settings.kubernetes.prometheus_release_label
            services = [m for (kind, _), m in found.items() if kind == "Service"
                        and all(m["metadata"]["labels"].get(k) == v
                                for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
            assert [s["metadata"]["name"] for s in services] == [name]
            assert port in {p["name"] for p in services[0]["spec"]["ports"]}
            # job label as the rules expect it (vllm / gateway)
            assert services[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == {"engine": "vllm",
                                                                                     "gateway": "gateway"}[name]
        for file_name, text in rule_files().items():
            rule = found[("PrometheusRule", file_name.removesuffix(".rules.yml"))]
            assert rule["spec"]["groups"] == yaml.safe_load(text)["groups"]
        dashboards = [m for (kind, _), m in found.items() if kind == "ConfigMap"
                      and m["metadata"]["labels"].get("grafana_dashboard") == "1"]
        assert len(dashboards) == 3
        (datasource_map,) = [m for (kind, _), m in found.items() if kind == "ConfigMap"
                             and m["metadata"]["labels"].get("grafana_datasource") == "1"]
        (datasource,) = yaml.safe_load(next(iter(datasource_map["data"].values())))["datasources"]
        assert datasource["url"] == settings.kubernetes.prometheus_url and datasource["isDefault"] is False
        for dashboard in dashboards:
            (text,) = dashboard["data"].values()
            uids = set(re.findall(r'"uid": "([^"]+)"', text))
            assert datasource["uid"] in uids  # the panels' datasource is the provisioned one
    return checked(stack, check)


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_edge_is_traefik_s_chart_with_the_docker_middlewares(stack):
    settings = load_stack_settings(stack)

    def check(d: Deployment):
        found = objects(d)
        chart = charts(d)["traefik"]
        assert chart["repositoryOpts"]["repo"] == "https://traefik.github.io/charts"
        assert re.match(r"^\d+\.\d+\.\d+$", chart["version"])
        image = chart["values"]["image"]
        assert f"{image['registry']}/{image['repository']}:{image['tag']}" == f"docker.io/{settings.images['traefik']}"
        assert chart["values"]["service"]["type"] == settings.kubernetes.edge_service_type
        ingress = found[("Ingress", "gateway")]
        annotations = ingress["metadata"]["annotations"]
        referenced = annotations["traefik.ingress.kubernetes.io/router.middlewares"].split(",")
        ns = settings.kubernetes.namespace
        assert referenced == [f"{ns}-{name}@kubernetescrd" for name in names(found, "Middleware")]
        headers = found[("Middleware", "gateway-headers")]["spec"]["headers"]
        assert headers["stsSeconds"] == settings.edge.hsts_seconds and headers["frameDeny"] is True
        if settings.edge.tls_mode == "acme":
            assert annotations["traefik.ingress.kubernetes.io/router.tls.certresolver"] == "le"
            assert chart["values"]["certificatesResolvers"]["le"]["acme"]["email"] == settings.edge.acme_email
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == "gateway" and ingress["spec"]["rules"][0]["host"] == settings.domain
    return checked(stack, check)


@pulumi.runtime.test
def test_optional_inference_extension_picker_and_gateway_api_edge():
    overrides = {"kubernetes": {"endpoint_picker": "inference-extension", "inference_gateway_class": "kgateway",
                                "edge": "gateway-api", "gateway_api_parent": "edge/public"}}

    def check(d: Deployment):
        found = objects(d)
        pool = charts(d)
        assert set(pool) == {"engine-pool"}  # no Traefik with a Gateway API edge
        values = pool["engine-pool"]["values"]
        engine_labels = found[("StatefulSet", "engine")]["spec"]["template"]["metadata"]["labels"]
        assert values["inferencePool"]["modelServers"]["matchLabels"] == engine_labels
        assert pool["engine-pool"]["chart"].startswith("oci://registry.k8s.io/gateway-api-inference-extension/")
        route = found[("HTTPRoute", "inference-gateway")]
        assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
        edge_route = found[("HTTPRoute", "gateway")]
        assert edge_route["spec"]["parentRefs"] == [{"name": "public", "namespace": "edge"}]
        gateway = found[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]
        engines = {e["name"]: e["value"] for e in gateway["env"]}["GATEWAY_ENGINES"]
        assert engines == "http://inference-gateway.llm-node-dev.svc.cluster.local:80"
        assert "NetworkPolicy" in {k for k, _ in found} and ("NetworkPolicy", "traefik") not in found
        for (kind, _), manifest in found.items():
            if kind in BUILT_IN_KINDS:
                kubernetes_validate.validate(manifest, "1.33", strict=True)
    return checked("k8s-dev", check, overrides=overrides)


@pulumi.runtime.test
def test_the_gateway_runs_as_its_image_s_non_root_user():
    from pathlib import Path

    dockerfile = (Path(manifests.__file__).resolve().parents[2] / "services" / "gateway" / "Dockerfile").read_text()
    assert f"USER {manifests.GATEWAY_UID}" in dockerfile

    def check(d: Deployment):
        found = objects(d)
        for kind, name in (("Deployment", "gateway"), ("Job", "gateway-migrate")):
            context = found[(kind, name)]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] == manifests.GATEWAY_UID
            assert context["capabilities"] == {"drop": ["ALL"]}
    return checked("k8s-dev", check)
