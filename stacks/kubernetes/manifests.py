"""The node as Kubernetes objects: plain manifests (dicts), built from the validated settings.

No Pulumi here: stacks/kubernetes/node.py declares these objects, the tests read them back
from the mock runtime. Every container starts exactly as on the Docker target, because the
argv and env come from the same functions (services/launch.py through stacks/engine.py and
stacks/gateway.py); only locations differ (the engine URLs the gateway is given).

Layout (one namespace, ``kubernetes.namespace``):
  engine          StatefulSet per engine group (served model; ``engine`` for the default group
                  ``main``, ``engine-<group>`` for the others), each behind a headless
                  Service. Stable pod names give the gateway one URL per replica
                  (engine-0.engine.<ns>.svc..., engine-embed-0.engine-embed.<ns>.svc...),
                  which it keeps re-resolving (its DNS cache lasts
                  gateway.engine_dns_ttl_seconds, <= 30 s here), so its least-outstanding
                  choice and per-engine breakers work unchanged; replicas KEDA has not
                  started yet fail DNS, count as refused and are skipped until they exist. Each group is autoscaled by
                  its own KEDA ScaledObject on its model's vllm:num_requests_waiting.
  gateway         Deployment + HPA + PDB; every replica shares PostgreSQL and Redis, so keys,
                  limits and usage are global (tests/k8s/test_gateway_replicas.py).
  gateway-migrate Job: the schema migration, before the gateway rolls out.
  postgres, redis StatefulSets with a PVC each (in-cluster data stores).
  quantize        Job writing the quantized model into the models PVC (quantize.enabled).
  edge            Traefik's own chart (helm.v4.Chart) + an Ingress, or an HTTPRoute.
  isolation       NetworkPolicies: default deny, then exactly the Docker networks' flows.
  observability   ServiceMonitors, PrometheusRules (prometheus/rules), dashboards ConfigMaps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from services.launch import (
    GATEWAY_SECRETS_DIR_ENV,
    GatewaySpec,
    engine_args,
    gateway_env,
    gateway_process_argv,
    gateway_secret_file,
    quantize_args,
)
from stacks import naming
from stacks.config import EngineDeployment, NodeSettings
from stacks.kubernetes.settings import KubernetesSettings

if TYPE_CHECKING:
    import pulumi

APP = "llm-node"
COMPONENT = "app.kubernetes.io/component"
JOB_LABEL = "llm-node.io/job"  # the Services' label ServiceMonitors take the job name from
DASHBOARD_LABEL = "grafana_dashboard"  # kube-prometheus-stack's Grafana sidecar default label
DATASOURCE_LABEL = "grafana_datasource"  # ... and its datasource sidecar's

ENGINE = "engine"
GATEWAY = naming.GATEWAY
MIGRATE = "gateway-migrate"
POSTGRES = naming.POSTGRES
REDIS = naming.REDIS
QUANTIZE = "quantize"
TRAEFIK = naming.TRAEFIK
EPP = "epp"  # the inference extension's endpoint picker (chart-managed)
INFERENCE_GATEWAY = "inference-gateway"

# Traefik chart defaults: container ports of the web/websecure/metrics entry points.
TRAEFIK_WEB_PORT = 8000
TRAEFIK_WEBSECURE_PORT = 8443
TRAEFIK_METRICS_PORT = 9100
TRAEFIK_SELECTOR = {"app.kubernetes.io/name": "traefik"}  # the chart's pod label
EPP_PORT = 9002  # ext-proc gRPC of the endpoint picker (gateway-api-inference-extension)
INFERENCE_GATEWAY_PORT = 80
API_SERVER_PORTS = (443, 6443)
DNS_PORT = 53
SECRETS_DIR = f"{naming.SECRETS_DIR}/gateway"  # as on Docker (stacks/gateway.py)
POSTGRES_USER = "llmnode"
POSTGRES_DB = "llmnode"
POSTGRES_PGDATA = "/var/lib/postgresql/data/pgdata"  # a subdirectory: a fresh volume's root holds lost+found
REDIS_CONFIG = "/usr/local/etc/redis/redis.conf"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

Meta = Callable[..., dict[str, Any]]  # build()'s meta(name, component, **_meta options)
Rule = dict[str, Any]  # one ingress or egress rule of a NetworkPolicy


def labels(component: str, prefix: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": prefix, COMPONENT: component}


def selector(component: str, prefix: str) -> dict[str, str]:
    return labels(component, prefix)


@dataclass
class Manifest:
    """One object: its manifest and how it depends on others (by ``key``)."""

    api_version: str
    kind: str
    name: str
    body: dict[str, Any]  # everything but apiVersion/kind (metadata, spec, data, ...)
    depends_on: Sequence[str] = ()  # keys of manifests to create first
    ignore_changes: Sequence[str] = ()  # fields a controller owns (replicas under an autoscaler)
    create_timeout_seconds: int | None = None

    @property
    def key(self) -> str:
        return f"{self.kind.lower()}-{self.name}"

    @property
    def manifest(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, **self.body}


@dataclass(frozen=True)
class Chart:
    """A Helm chart reused as is (helm.v4.Chart): never re-implemented here."""

    name: str
    chart: str
    version: str
    repository: str | None
    values: dict[str, Any]
    depends_on: Sequence[str] = ()
    harden: bool = False  # fill in resources/securityContext its templates leave out (harden_chart_workload)


@dataclass(frozen=True)
class Images:
    # The built images' names: Outputs on the cluster, plain strings in pure tests.
    engines: Mapping[str, pulumi.Input[str]]  # device (cpu | cuda) -> its engine image, one per device in use
    gateway: pulumi.Input[str]
    quantize: pulumi.Input[str] | None
    postgres: str
    redis: str
    traefik: str


@dataclass(frozen=True)
class SecretValues:
    """Pulumi secret Outputs (or plain strings in pure tests), only ever placed in Secrets."""

    postgres_password: Any
    redis_password: Any
    redis_conf: Any
    database_url: Any
    redis_url: Any
    admin_token: Any
    tls_private_key: Any = None


@dataclass
class Plan:
    manifests: list[Manifest] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    def add(self, manifest: Manifest) -> Manifest:
        if any(m.key == manifest.key for m in self.manifests):
            raise ValueError(f"two manifests named {manifest.key}")
        self.manifests.append(manifest)
        return manifest


# -- small builders ---------------------------------------------------------------------------------


def _meta(name: str, namespace: str, component: str, prefix: str, extra_labels: Mapping[str, str] | None = None,
          annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {**labels(component, prefix),
                                                                             **(extra_labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _env(env: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in sorted(env.items())]


def _http_probe(path: str, port: str, *, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _exec_probe(command: Sequence[str], *, period: int = 10, timeout: int = 5, failures: int = 6) -> dict[str, Any]:
    return {"exec": {"command": list(command)}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _resources(cpu: str, memory: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    # Memory limit = request (no overcommit of the node's memory); CPU limit = request too,
    # so every pod is in the Guaranteed QoS class when nothing extra is asked for.
    requests = {"cpu": cpu, "memory": memory, **(extra or {})}
    return {"requests": dict(requests), "limits": dict(requests)}


def _security(add: Sequence[str] = (), *, non_root_uid: int | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"privileged": False, "allowPrivilegeEscalation": False,
                               "capabilities": {"drop": ["NET_RAW"]}}
    if add:
        context["capabilities"]["add"] = list(add)
    if non_root_uid is not None:  # an image whose Dockerfile sets USER <uid>: nothing in it needs root
        context |= {"runAsNonRoot": True, "runAsUser": non_root_uid, "capabilities": {"drop": ["ALL"]}}
    return context


GATEWAY_UID = 10001  # services/gateway/Dockerfile: USER 10001


def _pvc(name: str, namespace: str, prefix: str, component: str, storage_class: str, gib: int,
         access_mode: str) -> Manifest:
    return Manifest("v1", "PersistentVolumeClaim", name, {
        "metadata": _meta(name, namespace, component, prefix),
        "spec": {"accessModes": [access_mode], "storageClassName": storage_class,
                 "resources": {"requests": {"storage": f"{gib}Gi"}}},
    })


def _service(name: str, namespace: str, prefix: str, component: str, ports: Mapping[str, int], *,
             headless: bool = False, job: str | None = None) -> Manifest:
    spec: dict[str, Any] = {"selector": selector(component, prefix), "type": "ClusterIP",
                            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                                      for port_name, port in ports.items()]}
    if headless:
        spec["clusterIP"] = "None"
    return Manifest("v1", "Service", name, {
        "metadata": _meta(name, namespace, component, prefix, {JOB_LABEL: job} if job else None), "spec": spec})


def _pdb(name: str, namespace: str, prefix: str, component: str, **budget: Any) -> Manifest:
    return Manifest("policy/v1", "PodDisruptionBudget", name, {
        "metadata": _meta(name, namespace, component, prefix),
        "spec": {"selector": {"matchLabels": selector(component, prefix)}, **budget},
    })


def _secret(name: str, namespace: str, prefix: str, component: str, data: Mapping[str, Any],
            type_: str = "Opaque") -> Manifest:
    return Manifest("v1", "Secret", name, {
        "metadata": _meta(name, namespace, component, prefix), "type": type_, "stringData": dict(data)})


def image_parts(reference: str) -> tuple[str, str, str]:
    """``[registry/]repo:tag`` -> (registry, repo, tag), for charts that take them apart (Docker Hub: docker.io)."""
    name, _, tag = reference.rpartition(":")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return "docker.io", name, tag


# -- the node ----------------------------------------------------------------------------------------


def kubernetes_settings(settings: NodeSettings) -> KubernetesSettings:
    """The kubernetes section, which a stack of target kubernetes always has (stacks/config.py)."""
    if settings.kubernetes is None:
        raise ValueError("the kubernetes manifests are for stacks of target kubernetes")
    return settings.kubernetes


def engine_name(group: str = naming.DEFAULT_ENGINE_GROUP) -> str:
    """A group's StatefulSet, Service, PDB, ScaledObject, NetworkPolicy and pod component label:
    ``engine`` for the default group (a one-model stack's objects keep their names), ``engine-<group>``."""
    return ENGINE if group == naming.DEFAULT_ENGINE_GROUP else f"{ENGINE}-{group}"


def engine_urls(k8s: KubernetesSettings, group: EngineDeployment) -> list[str]:
    """One URL per possible replica of a group: its StatefulSet's pod DNS names (up to the autoscaler's max)."""
    name = engine_name(group.group)
    return [f"http://{name}-{i}.{name}.{k8s.namespace}.svc.cluster.local:{group.spec.port}"
            for i in range(k8s.engine_max_replicas)]


def picked_group(settings: NodeSettings) -> EngineDeployment | None:
    """The generate group behind the inference extension's InferencePool (None: no endpoint picker)."""
    if kubernetes_settings(settings).endpoint_picker != "inference-extension":
        return None
    return settings.engine  # the only generate group (stacks/kubernetes/settings.py refuses more)


def gateway_spec(settings: NodeSettings) -> GatewaySpec:
    """The Docker target's GatewaySpec with the cluster's engine locations (nothing else changes):
    generate groups in ``engines``, embedding groups in ``embedding_engines``, as on Docker."""
    k8s = kubernetes_settings(settings)
    if picked_group(settings) is not None:
        engines = [f"http://{INFERENCE_GATEWAY}.{k8s.namespace}.svc.cluster.local:{INFERENCE_GATEWAY_PORT}"]
    else:
        engines = [url for group in settings.engines_of("generate") for url in engine_urls(k8s, group)]
    embedding = [url for group in settings.engines_of("embed") for url in engine_urls(k8s, group)]
    return settings.gateway.replace(engines=engines, embedding_engines=embedding)


def build(settings: NodeSettings, images: Images, secrets: SecretValues) -> Plan:
    k8s = kubernetes_settings(settings)
    ns, prefix = k8s.namespace, settings.name_prefix
    plan = Plan()

    namespace_labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": prefix}
    plan.add(Manifest("v1", "Namespace", ns, {"metadata": {"name": ns, "labels": namespace_labels}}))

    def meta(name: str, component: str, **kwargs: Any) -> dict[str, Any]:
        return _meta(name, ns, component, prefix, **kwargs)

    # -- storage ----------------------------------------------------------------------------------
    plan.add(_pvc("models", ns, prefix, ENGINE, k8s.models_storage_class, k8s.models_storage_gib, "ReadWriteMany"))
    plan.add(_pvc("adapters", ns, prefix, ENGINE, k8s.models_storage_class, k8s.adapters_storage_gib,
                  "ReadWriteMany"))

    # -- secrets (files, never env) ----------------------------------------------------------------
    in_cluster = k8s.data_stores == "in-cluster"
    if in_cluster:
        plan.add(_secret("postgres", ns, prefix, POSTGRES, {"postgres_password": secrets.postgres_password}))
        plan.add(_secret("redis", ns, prefix, REDIS, {"redis.conf": secrets.redis_conf,
                                                      "redis_password": secrets.redis_password}))
    plan.add(_secret("gateway", ns, prefix, GATEWAY, {gateway_secret_file("database_url"): secrets.database_url,
                                                      gateway_secret_file("redis_url"): secrets.redis_url,
                                                      gateway_secret_file("admin_token"): secrets.admin_token}))
    plan.add(_secret("gateway-migrate", ns, prefix, MIGRATE,
                     {gateway_secret_file("database_url"): secrets.database_url}))
    if settings.edge.tls_mode == "provided":
        plan.add(_secret("edge-tls", ns, prefix, TRAEFIK, {"tls.crt": settings.tls_certificate,
                                                          "tls.key": secrets.tls_private_key},
                         type_="kubernetes.io/tls"))

    # -- data stores (or the external ones' URLs in the gateway's Secret) ----------------------------
    if in_cluster:
        _postgres(plan, settings, images, meta)
        _redis(plan, settings, images, meta)

    # -- quantize job, engines ---------------------------------------------------------------------
    engine_after: dict[str, list[str]] = {group.group: [] for group in settings.engines}
    if settings.quantize is not None:
        assert images.quantize is not None and settings.quantize_group is not None
        gpu = settings.group(settings.quantize_group).spec.device == "cuda"  # the group it prepares
        job = plan.add(Manifest("batch/v1", "Job", QUANTIZE, {
            "metadata": meta(QUANTIZE, QUANTIZE),
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": settings.quantize_timeout_minutes * 60,
                "template": {
                    "metadata": {"labels": labels(QUANTIZE, prefix)},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "containers": [{
                            "name": QUANTIZE,
                            "image": images.quantize,
                            "args": quantize_args(settings.quantize),
                            "env": _env({"HF_HUB_OFFLINE": "1", "HF_HOME": naming.HF_HOME}),
                            "resources": _resources(k8s.engine_cpu, k8s.engine_memory,
                                                    {"nvidia.com/gpu": "1"} if gpu else None),
                            "securityContext": _security(),
                            "volumeMounts": [{"name": "models", "mountPath": naming.MODELS_DIR},
                                             {"name": "adapters", "mountPath": naming.ADAPTERS_SOURCE_DIR,
                                              "readOnly": True}],
                        }],
                        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                                    {"name": "adapters", "persistentVolumeClaim": {"claimName": "adapters"}}],
                        **({"tolerations": [_GPU_TOLERATION]} if gpu else {}),
                    },
                },
            },
        }, depends_on=["persistentvolumeclaim-models", "persistentvolumeclaim-adapters"],
            create_timeout_seconds=settings.quantize_timeout_minutes * 60 + 300))
        engine_after[settings.quantize_group].append(job.key)  # that group's engines serve the job's output
    for group in settings.engines:
        _engine(plan, settings, group, images, meta, engine_after[group.group])

    # -- gateway -----------------------------------------------------------------------------------
    _gateway(plan, settings, images, meta)

    # -- edge --------------------------------------------------------------------------------------
    _edge(plan, settings, images, meta)
    if k8s.endpoint_picker == "inference-extension":
        _inference_extension(plan, settings, meta)

    # -- isolation, observability -----------------------------------------------------------------
    for policy in network_policies(settings):
        plan.add(policy)
    _observability(plan, settings, meta)
    return plan


_GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _postgres(plan: Plan, settings: NodeSettings, images: Images, meta: Meta) -> None:
    from stacks.containers import ENTRYPOINTS_DIR
    from stacks.postgres import PASSWORD_FILE, START_SCRIPT

    k8s = kubernetes_settings(settings)
    plan.add(Manifest("v1", "ConfigMap", "postgres-start", {
        "metadata": meta("postgres-start", POSTGRES),
        "data": {START_SCRIPT: (ENTRYPOINTS_DIR / START_SCRIPT).read_text()}}))
    plan.add(_service(POSTGRES, k8s.namespace, settings.name_prefix, POSTGRES, {"postgres": naming.POSTGRES_PORT}))
    ready = ["pg_isready", "-U", POSTGRES_USER, "-d", POSTGRES_DB, "-h", "127.0.0.1"]
    plan.add(Manifest("apps/v1", "StatefulSet", POSTGRES, {
        "metadata": meta(POSTGRES, POSTGRES),
        "spec": {
            "serviceName": POSTGRES,
            "replicas": 1,
            "selector": {"matchLabels": selector(POSTGRES, settings.name_prefix)},
            "template": {
                "metadata": {"labels": labels(POSTGRES, settings.name_prefix)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 60,
                    "containers": [{
                        "name": POSTGRES,
                        "image": images.postgres,
                        # The same start script as on Docker: the password is re-applied from the file.
                        "command": [f"/run/llm-node/{START_SCRIPT}"],
                        "args": ["postgres"],
                        "env": _env({"POSTGRES_USER": POSTGRES_USER, "POSTGRES_DB": POSTGRES_DB,
                                     "POSTGRES_PASSWORD_FILE": PASSWORD_FILE, "PGDATA": POSTGRES_PGDATA}),
                        "ports": [{"name": "postgres", "containerPort": naming.POSTGRES_PORT}],
                        "readinessProbe": _exec_probe(ready),
                        "livenessProbe": _exec_probe(ready, period=15, failures=6),
                        "resources": _resources("500m", "1Gi"),
                        "securityContext": _security(),
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                            {"name": "secrets", "mountPath": naming.SECRETS_DIR, "readOnly": True},
                            {"name": "start", "mountPath": "/run/llm-node", "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "secrets", "secret": {"secretName": "postgres", "defaultMode": 0o444}},
                        {"name": "start", "configMap": {"name": "postgres-start", "defaultMode": 0o555}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": k8s.storage_class,
                         "resources": {"requests": {"storage": f"{k8s.postgres_storage_gib}Gi"}}},
            }],
        },
    }, depends_on=["secret-postgres", "configmap-postgres-start"], create_timeout_seconds=600))


def _redis(plan: Plan, settings: NodeSettings, images: Images, meta: Meta) -> None:
    from stacks.redis import DATA_DIR, PASSWORD_FILE

    k8s = kubernetes_settings(settings)
    plan.add(_service(REDIS, k8s.namespace, settings.name_prefix, REDIS, {"redis": naming.REDIS_PORT}))
    ping = ["sh", "-c", f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli ping | grep -q PONG']
    plan.add(Manifest("apps/v1", "StatefulSet", REDIS, {
        "metadata": meta(REDIS, REDIS),
        "spec": {
            "serviceName": REDIS,
            "replicas": 1,
            "selector": {"matchLabels": selector(REDIS, settings.name_prefix)},
            "template": {
                "metadata": {"labels": labels(REDIS, settings.name_prefix)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": REDIS,
                        "image": images.redis,
                        # The password is in the config file (a Secret), never on the command line.
                        "args": ["redis-server", REDIS_CONFIG],
                        "ports": [{"name": "redis", "containerPort": naming.REDIS_PORT}],
                        "readinessProbe": _exec_probe(ping),
                        "livenessProbe": _exec_probe(ping, period=15),
                        "resources": _resources("250m", "512Mi"),
                        "securityContext": _security(),
                        "volumeMounts": [
                            {"name": "data", "mountPath": DATA_DIR},
                            {"name": "secrets", "mountPath": REDIS_CONFIG, "subPath": "redis.conf",
                             "readOnly": True},
                            {"name": "secrets", "mountPath": PASSWORD_FILE, "subPath": "redis_password",
                             "readOnly": True},
                        ],
                    }],
                    "volumes": [{"name": "secrets", "secret": {"secretName": "redis", "defaultMode": 0o444}}],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": k8s.storage_class,
                         "resources": {"requests": {"storage": f"{k8s.redis_storage_gib}Gi"}}},
            }],
        },
    }, depends_on=["secret-redis"], create_timeout_seconds=600))


def engine_start_failures(group: EngineDeployment, period: int = 10) -> int:
    """startupProbe failureThreshold: the group's start period (the model's load), in probe periods."""
    return math.ceil(group.health_start_period_seconds / period)


def _engine(plan: Plan, settings: NodeSettings, engine: EngineDeployment, images: Images, meta: Meta,
            after: Sequence[str]) -> None:
    from stacks.engine import container_env

    k8s = kubernetes_settings(settings)
    spec = engine.spec
    gpu = spec.device == "cuda"
    prefix = settings.name_prefix
    name = engine_name(engine.group)
    plan.add(_service(name, k8s.namespace, prefix, name, {"http": spec.port}, headless=True, job="vllm"))
    start = engine.health_start_period_seconds
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # vLLM finishes its shutdown (workers, shared memory) on SIGTERM, as on Docker.
        "terminationGracePeriodSeconds": 30,
        "containers": [{
            "name": ENGINE,
            "image": images.engines[spec.device],
            # The image's entrypoint sanitizes the adapters, then runs `vllm serve <args>`;
            # args are the Docker container's command, token for token.
            "args": engine_args(spec),
            "env": _env(container_env(engine)),
            "ports": [{"name": "http", "containerPort": spec.port}],
            "startupProbe": _http_probe("/health", "http", period=10, timeout=5,
                                        failures=engine_start_failures(engine)),
            "readinessProbe": _http_probe("/health", "http", period=10, timeout=5, failures=3),
            "livenessProbe": _http_probe("/health", "http", period=30, timeout=10, failures=5),
            "resources": _resources(k8s.engine_cpu, k8s.engine_memory,
                                    {"nvidia.com/gpu": str(k8s.gpus_per_engine)} if gpu else None),
            # CPU thread pinning, as the Docker CPU engine (SYS_NICE); nothing more.
            "securityContext": _security(() if gpu else ("SYS_NICE",)),
            "volumeMounts": [
                {"name": "models", "mountPath": naming.MODELS_DIR, "readOnly": spec.hf_hub_offline},
                {"name": "adapters", "mountPath": naming.ADAPTERS_SOURCE_DIR, "readOnly": True},
                {"name": "sanitized-adapters", "mountPath": naming.ADAPTERS_SANITIZED_DIR},
                {"name": "shm", "mountPath": "/dev/shm"},
            ],
        }],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": spec.hf_hub_offline}},
            {"name": "adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}},
            {"name": "sanitized-adapters", "emptyDir": {}},
            # vLLM's workers share tensors through /dev/shm (Docker: shm_size).
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{engine.shm_size_mb}Mi"}},
        ],
        # Spread replicas over nodes when there are several (preferred: a one-node dev cluster still schedules).
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": selector(name, prefix)},
                                "topologyKey": "kubernetes.io/hostname"}}]}},
    }
    if gpu:
        pod_spec["tolerations"] = [_GPU_TOLERATION]
    plan.add(Manifest("apps/v1", "StatefulSet", name, {
        "metadata": meta(name, name),
        "spec": {
            "serviceName": name,
            "replicas": k8s.engine_min_replicas,
            "podManagementPolicy": "Parallel",  # scale-ups load models side by side, not one after another
            "selector": {"matchLabels": selector(name, prefix)},
            "template": {"metadata": {"labels": labels(name, prefix)}, "spec": pod_spec},
        },
    }, depends_on=["persistentvolumeclaim-models", "persistentvolumeclaim-adapters", *after],
        ignore_changes=["spec.replicas"], create_timeout_seconds=start + 600))
    plan.add(_pdb(name, k8s.namespace, prefix, name, maxUnavailable=1))
    plan.add(scaled_object(settings, engine))


def autoscaling_query(settings: NodeSettings, group: EngineDeployment) -> str:
    """The KEDA trigger's PromQL: requests queued in this namespace's engines of one group (its served
    model; vLLM V1's scheduler gauge, the same for an embed group's pooling runner; the metric and label are
    checked against the real engines of both kinds)."""
    k8s = kubernetes_settings(settings)
    return (f'sum(vllm:num_requests_waiting{{namespace="{k8s.namespace}",'
            f'model_name="{group.spec.served_model_name}"}})')


def scaled_object(settings: NodeSettings, group: EngineDeployment) -> Manifest:
    """KEDA ScaledObject for one engine group's StatefulSet (keda.sh/v1alpha1; the prometheus scaler).

    Field names from KEDA's ScaledObject spec (kedacore/keda apis/keda/v1alpha1/scaledobject_types.go:
    scaleTargetRef, pollingInterval, cooldownPeriod, minReplicaCount, maxReplicaCount,
    advanced.horizontalPodAutoscalerConfig.behavior, triggers[].metadata serverAddress/query/threshold);
    the metric is the one vLLM's production-stack scales on (docs/source/use_cases/autoscaling-keda.rst).
    A new replica loads the model for minutes: scale up one pod per start period at most, and
    scale down only after a long quiet window, so a brief lull never drops a loaded replica.
    That window is the scale-down stabilization window of the HPA KEDA creates (KEDA copies
    advanced.horizontalPodAutoscalerConfig.behavior into it), from
    kubernetes.scale_down_stabilization_seconds. cooldownPeriod is not it: KEDA applies it only
    when scaling to 0 (keda.sh ScaledObject spec, "cooldownPeriod"), and minReplicaCount is >= 1 here.
    """
    k8s = kubernetes_settings(settings)
    name = engine_name(group.group)
    load = min(max(group.health_start_period_seconds, 60), 1800)  # HPA policies: periodSeconds <= 1800
    return Manifest("keda.sh/v1alpha1", "ScaledObject", name, {
        "metadata": _meta(name, k8s.namespace, name, settings.name_prefix),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name},
            "minReplicaCount": k8s.engine_min_replicas,
            "maxReplicaCount": k8s.engine_max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": k8s.scale_down_stabilization_seconds,  # inert while minReplicaCount >= 1
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 60,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": load}]},
                "scaleDown": {"stabilizationWindowSeconds": k8s.scale_down_stabilization_seconds,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
            }}},
            "triggers": [{"type": "prometheus", "metadata": {
                "serverAddress": k8s.prometheus_url,
                "query": autoscaling_query(settings, group),
                "threshold": str(k8s.queue_target),
                "activationThreshold": "0",
            }}],
        },
    }, depends_on=[f"statefulset-{name}"])


def _gateway(plan: Plan, settings: NodeSettings, images: Images, meta: Meta) -> None:
    k8s = kubernetes_settings(settings)
    prefix = settings.name_prefix
    spec = gateway_spec(settings)
    plan.add(_service(GATEWAY, k8s.namespace, prefix, GATEWAY, {"http": spec.port, "metrics": spec.metrics_port},
                      job="gateway"))
    secrets_volume = {"name": "secrets", "secret": {"secretName": GATEWAY, "defaultMode": 0o444}}
    secrets_mount = {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True}
    from stacks.gateway import MIGRATE_ARGV, MIGRATE_TIMEOUT_SECONDS

    plan.add(Manifest("batch/v1", "Job", MIGRATE, {
        "metadata": meta(MIGRATE, MIGRATE),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": MIGRATE_TIMEOUT_SECONDS,
            "template": {
                "metadata": {"labels": labels(MIGRATE, prefix)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{
                        "name": MIGRATE,
                        "image": images.gateway,
                        "command": MIGRATE_ARGV,
                        "env": _env({GATEWAY_SECRETS_DIR_ENV: SECRETS_DIR}),
                        "resources": _resources("250m", "256Mi"),
                        "securityContext": _security(non_root_uid=GATEWAY_UID),
                        "volumeMounts": [secrets_mount],
                    }],
                    "volumes": [{"name": "secrets", "secret": {"secretName": MIGRATE, "defaultMode": 0o444}}],
                },
            },
        },
    }, depends_on=[*(["statefulset-postgres"] if k8s.data_stores == "in-cluster" else []), "secret-gateway-migrate"],
        create_timeout_seconds=MIGRATE_TIMEOUT_SECONDS + 300))

    grace = math.ceil(spec.shutdown_grace_seconds) + 5  # drain, then flush usage records (as on Docker)
    plan.add(Manifest("apps/v1", "Deployment", GATEWAY, {
        "metadata": meta(GATEWAY, GATEWAY),
        "spec": {
            "replicas": k8s.gateway_min_replicas,
            "selector": {"matchLabels": selector(GATEWAY, prefix)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(GATEWAY, prefix)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": grace,
                    "containers": [{
                        "name": GATEWAY,
                        "image": images.gateway,
                        "command": gateway_process_argv("python"),
                        "env": _env(gateway_env(spec) | {GATEWAY_SECRETS_DIR_ENV: SECRETS_DIR}),
                        "ports": [{"name": "http", "containerPort": spec.port},
                                  {"name": "metrics", "containerPort": spec.metrics_port}],
                        "readinessProbe": _http_probe("/readyz", "http", period=5, timeout=3, failures=3),
                        "livenessProbe": _http_probe("/healthz", "http", period=10, timeout=5, failures=5),
                        "resources": _resources(k8s.gateway_cpu, k8s.gateway_memory),
                        "securityContext": _security(non_root_uid=GATEWAY_UID),
                        "volumeMounts": [secrets_mount],
                    }],
                    "volumes": [secrets_volume],
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"labelSelector": {"matchLabels": selector(GATEWAY, prefix)},
                                            "topologyKey": "kubernetes.io/hostname"}}]}},
                },
            },
        },
    }, depends_on=["job-gateway-migrate", *(["statefulset-redis"] if k8s.data_stores == "in-cluster" else []),
                   "secret-gateway", *(f"statefulset-{engine_name(group.group)}" for group in settings.engines)],
        ignore_changes=["spec.replicas"], create_timeout_seconds=900))
    plan.add(_pdb(GATEWAY, k8s.namespace, prefix, GATEWAY, minAvailable=1))
    plan.add(Manifest("autoscaling/v2", "HorizontalPodAutoscaler", GATEWAY, {
        "metadata": meta(GATEWAY, GATEWAY),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY},
            "minReplicas": k8s.gateway_min_replicas,
            "maxReplicas": k8s.gateway_max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": k8s.gateway_cpu_target_percent}}}],
        },
    }, depends_on=["deployment-gateway"]))


# -- edge --------------------------------------------------------------------------------------------


def traefik_middlewares(settings: NodeSettings) -> dict[str, dict[str, Any]]:
    """The Docker target's gateway middlewares, as Middleware specs (traefik.io/v1alpha1).

    The same function renders them for both targets (stacks/gateway.py:traefik_routes, which
    the Docker target writes into Traefik's file-provider config): a file-provider middleware
    body ({"headers": {...}}) is exactly a Middleware's spec.
    """
    from stacks.gateway import traefik_routes

    return dict(traefik_routes(settings.gateway, settings.domain, settings.edge)["http"].get("middlewares", {}))


def _edge(plan: Plan, settings: NodeSettings, images: Images, meta: Meta) -> None:
    k8s = kubernetes_settings(settings)
    ns, prefix = k8s.namespace, settings.name_prefix
    gateway_port = settings.gateway.port
    if k8s.edge == "gateway-api":
        parent_ns, parent = k8s.gateway_api_parent_ref
        plan.add(Manifest("gateway.networking.k8s.io/v1", "HTTPRoute", GATEWAY, {
            "metadata": meta(GATEWAY, GATEWAY),
            "spec": {"parentRefs": [{"name": parent, "namespace": parent_ns}],
                     "hostnames": [settings.domain],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": [{"name": GATEWAY, "port": gateway_port}]}]},
        }, depends_on=["service-gateway"]))
        return

    # Values checked against the pinned chart's values.schema.json (traefik/traefik-helm-chart
    # v39.0.2, additionalProperties: false), e.g. redirections live under ports.web.http.
    registry, repository, tag = image_parts(images.traefik)
    values: dict[str, Any] = {
        "image": {"registry": registry, "repository": repository, "tag": tag},  # the images table's pinned Traefik
        "deployment": {"replicas": 2},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
        "service": {"type": k8s.edge_service_type},
        "ingressClass": {"enabled": True, "isDefaultClass": False, "name": f"{prefix}-traefik"},
        "providers": {"kubernetesCRD": {"enabled": True, "namespaces": [ns]},
                      "kubernetesIngress": {"enabled": True, "namespaces": [ns]}},
        "ports": {"web": {"http": {"redirections": {"entryPoint": {"to": "websecure", "scheme": "https"}}}}},
        "metrics": {"prometheus": {"serviceMonitor": {"enabled": True, "additionalLabels": {
            "release": k8s.prometheus_release_label}}}},
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True},
    }
    annotations = {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
                   "traefik.ingress.kubernetes.io/router.tls": "true"}
    if settings.edge.tls_mode == "acme":
        acme: dict[str, Any] = {"email": settings.edge.acme_email, "storage": "/data/acme.json",
                                "httpChallenge": {"entryPoint": "web"}}
        if settings.edge.acme_ca_server:
            acme["caServer"] = settings.edge.acme_ca_server
        values["certificatesResolvers"] = {"le": {"acme": acme}}
        # One replica with the ACME store on a volume (Traefik's ACME is not cluster-aware).
        values["deployment"]["replicas"] = 1
        values["podDisruptionBudget"] = {"enabled": False}
        values["persistence"] = {"enabled": True, "storageClass": k8s.storage_class, "size": "128Mi"}
        annotations["traefik.ingress.kubernetes.io/router.tls.certresolver"] = "le"
    plan.charts.append(Chart(TRAEFIK, "traefik", k8s.traefik_chart_version, "https://traefik.github.io/charts",
                             values, depends_on=[f"namespace-{ns}"]))

    middleware_names = []
    for name, spec in traefik_middlewares(settings).items():
        plan.add(Manifest("traefik.io/v1alpha1", "Middleware", name, {"metadata": meta(name, TRAEFIK), "spec": spec}))
        middleware_names.append(f"{ns}-{name}@kubernetescrd")
    annotations["traefik.ingress.kubernetes.io/router.middlewares"] = ",".join(middleware_names)
    tls: dict[str, Any] = {"hosts": [settings.domain]}
    if settings.edge.tls_mode == "provided":
        tls["secretName"] = "edge-tls"
    plan.add(Manifest("networking.k8s.io/v1", "Ingress", GATEWAY, {
        "metadata": meta(GATEWAY, GATEWAY, annotations=annotations),
        "spec": {"ingressClassName": f"{prefix}-traefik", "tls": [tls],
                 "rules": [{"host": settings.domain, "http": {"paths": [{
                     "path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": GATEWAY, "port": {"name": "http"}}}}]}}]},
    }, depends_on=["service-gateway", *(f"middleware-{n}" for n in traefik_middlewares(settings))]))


def _inference_extension(plan: Plan, settings: NodeSettings, meta: Meta) -> None:
    """Optional: the gateway forwards to an inference gateway whose HTTPRoute targets an InferencePool.

    The pool and its endpoint picker (queue depth, KV-cache use, prefix-cache and LoRA affinity
    scorers) are the upstream chart's (kubernetes-sigs/gateway-api-inference-extension v1.0.1,
    config/charts/inferencepool/values.yaml: inferencePool.modelServers.matchLabels,
    inferencePool.targetPorts, modelServerType; the InferencePool is named after the release,
    the picker's pods are labelled ``inferencepool: <release>-epp`` (templates/_helpers.tpl));
    nothing of it is re-implemented here. The Gateway's class must support InferencePool
    backends (kgateway, Istio, GKE).
    """
    k8s = kubernetes_settings(settings)
    group = picked_group(settings)
    assert group is not None
    name = engine_name(group.group)
    pool = inference_pool(settings)
    plan.charts.append(Chart(pool, "oci://registry.k8s.io/gateway-api-inference-extension/charts/inferencepool",
                             k8s.inference_pool_chart_version, None, {
                                 "inferencePool": {"modelServers": {"matchLabels": selector(name,
                                                                                            settings.name_prefix)},
                                                   "targetPorts": [{"number": group.spec.port}],
                                                   "modelServerType": "vllm"},
                                 "provider": {"name": "none"},
                             }, depends_on=[f"statefulset-{name}"], harden=True))
    plan.add(Manifest("gateway.networking.k8s.io/v1", "Gateway", INFERENCE_GATEWAY, {
        "metadata": meta(INFERENCE_GATEWAY, INFERENCE_GATEWAY),
        "spec": {"gatewayClassName": k8s.inference_gateway_class,
                 "listeners": [{"name": "http", "protocol": "HTTP", "port": INFERENCE_GATEWAY_PORT,
                                "allowedRoutes": {"namespaces": {"from": "Same"}}}]},
    }))
    plan.add(Manifest("gateway.networking.k8s.io/v1", "HTTPRoute", INFERENCE_GATEWAY, {
        "metadata": meta(INFERENCE_GATEWAY, INFERENCE_GATEWAY),
        "spec": {"parentRefs": [{"name": INFERENCE_GATEWAY}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                             "name": pool}]}]},
    }, depends_on=[f"gateway-{INFERENCE_GATEWAY}"]))


def inference_pool(settings: NodeSettings) -> str:
    """The InferencePool (the chart's release) of the picked group: ``engine-pool`` for the default group."""
    group = picked_group(settings)
    return f"{engine_name(group.group if group is not None else naming.DEFAULT_ENGINE_GROUP)}-pool"


# The endpoint picker's Deployment in the inferencepool chart (v1.0.1, templates/epp-deployment.yaml)
# sets no resources and no securityContext, and the chart has no values for them: the program
# fills them in on the rendered object (a Pulumi transform on the chart), so the pack's
# k8s-probes-and-resources and k8s-no-privilege hold for it too.
EPP_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}


def harden_chart_workload(resource_type: str, props: Mapping[str, Any]) -> dict[str, Any] | None:
    """A chart's Deployment with resources and a non-privileged securityContext where it has none
    (None: not a Deployment, nothing to change)."""
    if resource_type != "kubernetes:apps/v1:Deployment":
        return None
    changed = False
    hardened: dict[str, Any] = copy.deepcopy(dict(props))
    for container in (((hardened.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
        if not container.get("resources"):
            container["resources"] = copy.deepcopy(EPP_RESOURCES)
            changed = True
        context = container.setdefault("securityContext", {})
        for key, value in (("privileged", False), ("allowPrivilegeEscalation", False)):
            if key not in context:
                context[key] = value
                changed = True
    return hardened if changed else None


# -- isolation ---------------------------------------------------------------------------------------


def _peer(component: str | None = None, prefix: str = "", *, namespace: str | None = None,
          pod_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    peer: dict[str, Any] = {}
    if component is not None:
        peer["podSelector"] = {"matchLabels": selector(component, prefix)}
    elif pod_labels is not None:
        peer["podSelector"] = {"matchLabels": dict(pod_labels)}
    if namespace is not None:
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return peer


def _ports(*ports: int, protocol: str = "TCP") -> list[dict[str, Any]]:
    return [{"protocol": protocol, "port": port} for port in ports]


def network_policies(settings: NodeSettings) -> list[Manifest]:
    """Default deny, then the Docker networks' flows (stacks/node.py), one policy per workload.

    Docker: data stores and engines sit on the internal network with the gateway (and
    Prometheus for metrics); only Traefik and the gateway face the edge. Here: PostgreSQL
    and Redis accept the gateway only (and the migration job, PostgreSQL); each engine group
    accepts the gateway (and, the group behind the endpoint picker, the inference gateway and
    the picker); metrics ports accept Prometheus (kube-prometheus-stack, in
    kubernetes.monitoring_namespace).
    """
    k8s = kubernetes_settings(settings)
    ns, prefix = k8s.namespace, settings.name_prefix
    gateway = settings.gateway
    picked = picked_group(settings)
    picker = picked is not None
    prometheus = _peer(namespace=k8s.monitoring_namespace, pod_labels={"app.kubernetes.io/name": "prometheus"})
    def p(component: str) -> dict[str, Any]:
        return _peer(component, prefix)

    traefik = _peer(pod_labels=TRAEFIK_SELECTOR)
    inference_gateway = _peer(pod_labels={"gateway.networking.k8s.io/gateway-name": INFERENCE_GATEWAY})
    epp_labels = {"inferencepool": f"{inference_pool(settings)}-epp"}
    epp = _peer(pod_labels=epp_labels)
    anywhere = {"ipBlock": {"cidr": "0.0.0.0/0"}}
    internet = {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}

    def policy(name: str, pod_selector: Mapping[str, Any], ingress: list[Rule] | None, egress: list[Rule] | None,
               component: str) -> Manifest:
        spec: dict[str, Any] = {"podSelector": dict(pod_selector), "policyTypes": []}
        if ingress is not None:
            spec["policyTypes"].append("Ingress")
            spec["ingress"] = ingress
        if egress is not None:
            spec["policyTypes"].append("Egress")
            spec["egress"] = egress
        return Manifest("networking.k8s.io/v1", "NetworkPolicy", name, {
            "metadata": _meta(name, ns, component, prefix), "spec": spec}, depends_on=[f"namespace-{ns}"])

    def ingress(peers: list[dict[str, Any]], *ports: int) -> Rule:
        return {"from": peers, "ports": _ports(*ports)}

    def egress(peers: list[dict[str, Any]], *ports: int) -> Rule:
        return {"to": peers, "ports": _ports(*ports)}

    def sel(component: str) -> dict[str, Any]:
        return {"matchLabels": selector(component, prefix)}

    if k8s.data_stores == "in-cluster":
        postgres_egress = egress([p(POSTGRES)], naming.POSTGRES_PORT)
        redis_egress = egress([p(REDIS)], naming.REDIS_PORT)
    else:  # the external stores' addresses (kubernetes.external_data_cidrs), their ports only
        external = [{"ipBlock": {"cidr": cidr}} for cidr in k8s.external_data_cidrs]
        postgres_egress = egress(external, k8s.external_postgres_port)
        redis_egress = egress(external, k8s.external_redis_port)
    policies = [
        policy("default-deny", {}, [], [], "network"),
        # Every pod resolves names (the gateway re-resolves the engines' pod names).
        policy("dns", {}, None, [{"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": _ports(DNS_PORT, protocol="UDP") + _ports(DNS_PORT)}], "network"),
        *(policy(engine_name(group.group), sel(engine_name(group.group)),
                 [ingress([p(GATEWAY), *([inference_gateway, epp] if _is(group, picked) else [])], group.spec.port),
                  ingress([prometheus], group.spec.port)],
                 # Downloads from the hub only when the group may (its hf_hub_offline: false).
                 [] if group.spec.hf_hub_offline else [egress([internet], 443)], engine_name(group.group))
          for group in settings.engines),
        policy(GATEWAY, sel(GATEWAY),
               [ingress([_peer(namespace=k8s.gateway_api_parent_ref[0])] if k8s.edge == "gateway-api"
                        else [traefik], gateway.port),
                ingress([prometheus], gateway.metrics_port)],
               [postgres_egress, redis_egress,
                *([egress([inference_gateway], INFERENCE_GATEWAY_PORT)] if picker else []),
                # every group the gateway reaches directly (all of them without the picker), by port
                *(egress([p(engine_name(group.group)) for group in groups], port)
                  for port, groups in _by_port(group for group in settings.engines
                                   if not _is(group, picked)).items())],
               GATEWAY),
        policy(MIGRATE, sel(MIGRATE), [], [postgres_egress], MIGRATE),
    ]
    if k8s.data_stores == "in-cluster":
        policies += [
            policy(POSTGRES, sel(POSTGRES), [ingress([p(GATEWAY), p(MIGRATE)], naming.POSTGRES_PORT)], [], POSTGRES),
            policy(REDIS, sel(REDIS), [ingress([p(GATEWAY)], naming.REDIS_PORT)], [], REDIS),
        ]
    if settings.quantize is not None:
        policies.append(policy(QUANTIZE, sel(QUANTIZE), [], [], QUANTIZE))  # offline: no traffic at all
    if k8s.edge == "traefik":
        policies.append(policy(TRAEFIK, {"matchLabels": TRAEFIK_SELECTOR},
                               [ingress([], TRAEFIK_WEB_PORT, TRAEFIK_WEBSECURE_PORT),
                                ingress([prometheus], TRAEFIK_METRICS_PORT)],
                               # The gateway; the API server (Ingress watch) and ACME (https) outside.
                               [egress([p(GATEWAY)], gateway.port), egress([anywhere], *API_SERVER_PORTS)], TRAEFIK))
    if picked is not None:
        pool_pods, pool_port = p(engine_name(picked.group)), picked.spec.port
        policies.append(policy(EPP, {"matchLabels": epp_labels},
                               [ingress([inference_gateway], EPP_PORT), ingress([prometheus], 9090)],
                               [egress([pool_pods], pool_port), egress([anywhere], *API_SERVER_PORTS)], EPP))
        policies.append(policy(INFERENCE_GATEWAY, {"matchLabels": {
            "gateway.networking.k8s.io/gateway-name": INFERENCE_GATEWAY}},
            [ingress([p(GATEWAY)], INFERENCE_GATEWAY_PORT)],
            # Its own control plane (xDS) lives in another namespace.
            [egress([pool_pods], pool_port), egress([epp], EPP_PORT),
             {"to": [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                                   "operator": "NotIn", "values": [ns]}]}}]}],
            INFERENCE_GATEWAY))
    return policies


def _is(group: EngineDeployment, picked: EngineDeployment | None) -> bool:
    return picked is not None and group.group == picked.group


def _by_port(groups: Iterable[EngineDeployment]) -> dict[int, list[EngineDeployment]]:
    """Engine groups by the port they listen on (in stack-file order): one egress rule per port."""
    ports: dict[int, list[EngineDeployment]] = {}
    for group in groups:
        ports.setdefault(group.spec.port, []).append(group)
    return ports


# -- observability -----------------------------------------------------------------------------------


def _observability(plan: Plan, settings: NodeSettings, meta: Meta) -> None:
    from grafana.render import provisioning_files, render_dashboards
    from prometheus.render import SCRAPE_INTERVAL, rule_files

    k8s = kubernetes_settings(settings)
    release = {"release": k8s.prometheus_release_label}  # kube-prometheus-stack's default selector
    monitored = [*((engine_name(group.group), "http") for group in settings.engines), (GATEWAY, "metrics")]
    for component, port in monitored:
        plan.add(Manifest("monitoring.coreos.com/v1", "ServiceMonitor", component, {
            "metadata": meta(component, component, extra_labels=release),
            "spec": {"selector": {"matchLabels": selector(component, settings.name_prefix)},
                     "namespaceSelector": {"matchNames": [k8s.namespace]},
                     # job = the Service's llm-node.io/job label: "vllm" / "gateway", as the rules expect.
                     "jobLabel": JOB_LABEL,
                     # The Docker target's scrape interval: the rules' and dashboards' rate windows assume it.
                     "endpoints": [{"port": port, "path": "/metrics", "interval": SCRAPE_INTERVAL}]},
        }))
    for file_name, text in rule_files().items():
        name = file_name.removesuffix(".rules.yml").replace("_", "-")
        plan.add(Manifest("monitoring.coreos.com/v1", "PrometheusRule", name, {
            "metadata": meta(name, "observability", extra_labels=release),
            "spec": {"groups": yaml.safe_load(text)["groups"]},
        }))
    # The dashboards query a fixed datasource uid: provision it for Grafana's datasource sidecar
    # (kube-prometheus-stack: label grafana_datasource), from the Docker target's provisioning
    # file, not as the default (the chart's own Prometheus datasource is).
    datasources = yaml.safe_load(next(text for path, text in provisioning_files(k8s.prometheus_url).items()
                                      if path.startswith("provisioning/datasources/")))
    for datasource in datasources["datasources"]:
        datasource |= {"name": "llm-node Prometheus", "isDefault": False}
    plan.add(Manifest("v1", "ConfigMap", "grafana-datasource", {
        "metadata": meta("grafana-datasource", "observability", extra_labels={DATASOURCE_LABEL: "1"}),
        "data": {"llm-node-datasource.yaml": yaml.safe_dump(datasources, sort_keys=False)},
    }))
    for file_name, text in render_dashboards().items():
        name = f"dashboard-{file_name.removesuffix('.json')}"
        plan.add(Manifest("v1", "ConfigMap", name, {
            "metadata": meta(name, "observability", extra_labels={DASHBOARD_LABEL: "1"}),
            "data": {file_name: text},
        }))
