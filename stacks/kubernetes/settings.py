"""The ``kubernetes`` config object: how the node runs on a cluster (``target: kubernetes``).

Everything else (engine, gateway, edge TLS, quantize, images) is the same validated
configuration the Docker target reads (stacks/config.py); this module adds only what a
cluster needs and rejects the Docker-only settings that would silently do nothing there.
Every error names its key, e.g. ``llm-node:kubernetes.gpus_per_engine: is required ...``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stacks.config import EngineDeployment

TARGETS = ("docker", "kubernetes")
EDGES = ("traefik", "gateway-api")
ENDPOINT_PICKERS = ("none", "inference-extension")
SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")

KUBERNETES_KEYS = (
    "namespace", "version", "context", "storage_class", "models_storage_class", "models_storage_gib",
    "adapters_storage_gib", "postgres_storage_gib", "redis_storage_gib", "image_registry", "gpus_per_engine",
    "engine_min_replicas", "engine_max_replicas", "queue_target", "scale_down_stabilization_seconds",
    "engine_cpu", "engine_memory", "gateway_min_replicas", "gateway_max_replicas", "gateway_cpu_target_percent",
    "gateway_cpu", "gateway_memory", "edge", "edge_service_type", "traefik_chart_version", "gateway_api_parent",
    "prometheus_url", "monitoring_namespace", "prometheus_release_label", "endpoint_picker",
    "inference_gateway_class", "inference_pool_chart_version", "data_stores", "external_data_cidrs",
    "external_postgres_port", "external_redis_port",
)
DATA_STORES = ("in-cluster", "external")

# The gateway re-resolves the engines' per-pod names at least this often on a cluster.
MAX_ENGINE_DNS_TTL_SECONDS = 30
# Kubernetes versions kubernetes-validate ships schemas for (the tests validate against the one named).
SUPPORTED_VERSIONS = (25, 37)
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^1\.(\d+)$")
_CPU = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
_MEMORY = re.compile(r"^\d+(Ki|Mi|Gi|Ti)$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?(/[a-z0-9._-]+)*$")
_PARENT = re.compile(r"^[a-z0-9-]+/[a-z0-9-]+$")
_CHART_VERSION = re.compile(r"^v?\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class KubernetesSettings:
    namespace: str
    version: str  # "1.33": the API the manifests are written (and validated) for
    context: str | None  # kubeconfig context; None: the current one
    storage_class: str  # PostgreSQL, Redis, adapters
    models_storage_class: str  # ReadWriteMany: the quantize job writes, every engine replica reads
    models_storage_gib: int
    adapters_storage_gib: int
    postgres_storage_gib: int
    redis_storage_gib: int
    image_registry: str  # where the images built from this repository are pushed
    gpus_per_engine: int  # nvidia.com/gpu per engine pod; 0 on cpu
    engine_min_replicas: int
    engine_max_replicas: int
    queue_target: int  # vllm:num_requests_waiting per replica KEDA aims at
    scale_down_stabilization_seconds: int  # the engines' HPA scale-down stabilization window (not a KEDA cool-down)
    engine_cpu: str
    engine_memory: str
    gateway_min_replicas: int
    gateway_max_replicas: int
    gateway_cpu_target_percent: int
    gateway_cpu: str
    gateway_memory: str
    edge: str  # traefik (the chart) | gateway-api (an HTTPRoute on an existing Gateway)
    edge_service_type: str
    traefik_chart_version: str
    gateway_api_parent: str | None  # "namespace/name" of the Gateway (edge gateway-api)
    prometheus_url: str
    monitoring_namespace: str
    prometheus_release_label: str
    endpoint_picker: str  # none | inference-extension
    inference_gateway_class: str | None
    inference_pool_chart_version: str
    data_stores: str = "in-cluster"  # in-cluster | external (the secrets external_database_url/_redis_url)
    external_data_cidrs: tuple[str, ...] = ()  # where the external data stores are (NetworkPolicy egress)
    external_postgres_port: int = 5432
    external_redis_port: int = 6379

    @property
    def version_minor(self) -> int:
        return int(self.version.split(".")[1])

    @property
    def gateway_api_parent_ref(self) -> tuple[str, str]:
        """(namespace, name) of the Gateway of edge gateway-api, where gateway_api_parent is required."""
        if self.gateway_api_parent is None:
            raise ValueError("kubernetes.gateway_api_parent is only set with edge gateway-api")
        namespace, name = self.gateway_api_parent.split("/")
        return namespace, name


def parse_target(values: Mapping[str, Any]) -> str:
    from stacks.config import ConfigError

    target: str = values.get("target", "docker")
    if target not in TARGETS:
        raise ConfigError("target", f"{target!r} is not one of {', '.join(TARGETS)}")
    return target


def parse_kubernetes(values: Mapping[str, Any] | None, *, target: str, engines: Sequence[EngineDeployment],
                     raw_engines: Sequence[Mapping[str, Any] | None], tunnel_enabled: bool, models_host_dir: str | None,
                     engine_dns_ttl_seconds: int | None = None, secrets_present: Sequence[str] = (),
                     ) -> KubernetesSettings | None:
    """The ``kubernetes`` object, validated (None on the docker target, where it must be absent)."""
    from stacks.config import ConfigError, _Section

    s = _Section("kubernetes", values)
    s.reject_unknown(KUBERNETES_KEYS)
    if target != "kubernetes":
        if s.values:
            raise ConfigError("kubernetes", "applies only to target: kubernetes (this stack's target is docker)")
        for secret in ("external_database_url", "external_redis_url"):
            if secret in secrets_present:
                raise ConfigError(secret, "applies only to target: kubernetes with kubernetes.data_stores: external")
        return None
    # Every engine group is its own StatefulSet (+ Service, PDB, KEDA scaler, NetworkPolicy);
    # the kubernetes.engine_* settings below apply to each group alike.
    # Docker-only settings would silently do nothing on a cluster: refuse them.
    for group, raw in zip(engines, raw_engines, strict=True):
        if raw and raw.get("gpu_ids") is not None:
            raise ConfigError(f"{group.section}.gpu_ids",
                              "is a Docker host setting; on kubernetes set kubernetes.gpus_per_engine "
                              "(the scheduler picks the GPUs)")
    if tunnel_enabled:
        raise ConfigError("tunnel.enabled", "is not supported on target kubernetes yet (expose the edge Service "
                                            "or run cloudflared in the cluster yourself)")
    if models_host_dir is not None:
        raise ConfigError("volumes.models_host_dir", "is a Docker host directory; on kubernetes the models live "
                                                     "in a PersistentVolumeClaim (kubernetes.models_storage_class)")

    if engine_dns_ttl_seconds is not None and engine_dns_ttl_seconds > MAX_ENGINE_DNS_TTL_SECONDS:
        raise ConfigError("gateway.engine_dns_ttl_seconds", f"{engine_dns_ttl_seconds} is too long on kubernetes "
                                                            f"(at most {MAX_ENGINE_DNS_TTL_SECONDS}): engines are "
                                                            "per-pod DNS names whose address changes on replacement")

    def label(key: str, default: Any = ...) -> Any:
        value = s.string(key) if default is ... else s.string(key, default)
        if value is not None and not _DNS_LABEL.match(value):
            raise ConfigError(s.key(key), f"{value!r} is not a DNS label (lowercase letters, digits, dashes)")
        return value

    namespace = label("namespace")
    version = s.string("version", "1.33")
    match = _VERSION.match(version)
    low, high = SUPPORTED_VERSIONS
    if not match or not low <= int(match.group(1)) <= high:
        raise ConfigError("kubernetes.version", f"{version!r} must be 1.{low} to 1.{high} (major.minor)")
    storage_class = label("storage_class")
    registry = s.string("image_registry")
    if not _REGISTRY.match(registry):
        raise ConfigError("kubernetes.image_registry", f"{registry!r} is not a registry path (host[:port]/path)")

    cuda_groups = [group for group in engines if group.spec.device == "cuda"]
    gpu = bool(cuda_groups)  # the engine_cpu/engine_memory defaults: a GPU node's when any group is on cuda
    gpus = s.integer("gpus_per_engine", None, minimum=1, maximum=16)
    if gpu and gpus is None:
        raise ConfigError("kubernetes.gpus_per_engine", f"is required when {cuda_groups[0].section}.device is cuda "
                                                        "(nvidia.com/gpu per engine pod of every cuda group; 2+ for "
                                                        "tensor parallel)")
    if not gpu and gpus is not None:
        raise ConfigError("kubernetes.gpus_per_engine", "only applies to engine.device: cuda")

    # Every group scales between the same bounds (default minimum: the largest group's replicas).
    min_replicas = s.integer("engine_min_replicas", max(group.replicas for group in engines), minimum=1)
    max_replicas = s.integer("engine_max_replicas", min_replicas, minimum=1)
    if max_replicas < min_replicas:
        raise ConfigError("kubernetes.engine_max_replicas", f"{max_replicas} is below engine_min_replicas "
                                                            f"({min_replicas})")
    gateway_min = s.integer("gateway_min_replicas", 2, minimum=1)
    gateway_max = s.integer("gateway_max_replicas", max(gateway_min, 6), minimum=1)
    if gateway_max < gateway_min:
        raise ConfigError("kubernetes.gateway_max_replicas", f"{gateway_max} is below gateway_min_replicas "
                                                             f"({gateway_min})")

    def quantity(key: str, default: str, pattern: re.Pattern[str], what: str) -> str:
        value: str = s.string(key, default)
        if not pattern.match(value):
            raise ConfigError(s.key(key), f"{value!r} is not {what}")
        return value

    edge = s.string("edge", "traefik", choices=EDGES)
    parent = s.string("gateway_api_parent", None)
    if edge == "gateway-api" and parent is None:
        raise ConfigError("kubernetes.gateway_api_parent", "is required when kubernetes.edge is gateway-api "
                                                           "(namespace/name of the Gateway the HTTPRoute attaches to)")
    if parent is not None and not _PARENT.match(parent):
        raise ConfigError("kubernetes.gateway_api_parent", f"{parent!r} must be namespace/name")
    picker = s.string("endpoint_picker", "none", choices=ENDPOINT_PICKERS)
    generate = [group.group for group in engines if group.kind == "generate"]
    if picker == "inference-extension" and len(generate) != 1:
        raise ConfigError("kubernetes.endpoint_picker", f"inference-extension serves one generate group (one "
                                                        f"InferencePool), this stack has {len(generate)} "
                                                        f"({', '.join(generate)}): set endpoint_picker: none "
                                                        "(the gateway picks among every group's pods itself)")
    inference_class = s.string("inference_gateway_class", None)
    if picker == "inference-extension" and inference_class is None:
        raise ConfigError("kubernetes.inference_gateway_class", "is required when kubernetes.endpoint_picker is "
                                                                "inference-extension (a GatewayClass whose "
                                                                "implementation supports InferencePool, e.g. kgateway)")
    prometheus_url = s.string("prometheus_url", "http://kube-prometheus-stack-prometheus.monitoring.svc:9090")
    if not prometheus_url.startswith(("http://", "https://")):
        raise ConfigError("kubernetes.prometheus_url", f"{prometheus_url!r} must be an http(s) URL")

    def chart_version(key: str, default: str) -> str:
        value: str = s.string(key, default)
        if not _CHART_VERSION.match(value):
            raise ConfigError(s.key(key), f"{value!r} is not a pinned chart version (x.y.z)")
        return value

    data_stores = s.string("data_stores", "in-cluster", choices=DATA_STORES)
    cidrs = s.strings("external_data_cidrs")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError("kubernetes.external_data_cidrs", f"{cidr!r} is not a CIDR range") from None
    if data_stores == "external":
        for secret in ("external_database_url", "external_redis_url"):
            if secret not in secrets_present:
                raise ConfigError(secret, "is required when kubernetes.data_stores is external: "
                                          f"pulumi config set --secret {secret} <url>")
        if not cidrs:
            raise ConfigError("kubernetes.external_data_cidrs", "is required when kubernetes.data_stores is external "
                                                                "(the gateway's NetworkPolicy egress to them)")
    elif cidrs or any(k in s.values for k in ("external_postgres_port", "external_redis_port")):
        raise ConfigError("kubernetes.data_stores", "external_* settings need kubernetes.data_stores: external")

    return KubernetesSettings(
        data_stores=data_stores,
        external_data_cidrs=cidrs,
        external_postgres_port=s.integer("external_postgres_port", 5432, minimum=1, maximum=65535),
        external_redis_port=s.integer("external_redis_port", 6379, minimum=1, maximum=65535),
        namespace=namespace,
        version=version,
        context=s.string("context", None),
        storage_class=storage_class,
        models_storage_class=label("models_storage_class", storage_class),
        models_storage_gib=s.integer("models_storage_gib", 100, minimum=1),
        adapters_storage_gib=s.integer("adapters_storage_gib", 1, minimum=1),
        postgres_storage_gib=s.integer("postgres_storage_gib", 10, minimum=1),
        redis_storage_gib=s.integer("redis_storage_gib", 1, minimum=1),
        image_registry=registry,
        gpus_per_engine=gpus or 0,
        engine_min_replicas=min_replicas,
        engine_max_replicas=max_replicas,
        queue_target=s.integer("queue_target", 5, minimum=1),
        scale_down_stabilization_seconds=s.integer("scale_down_stabilization_seconds", 600, minimum=0, maximum=3600),
        engine_cpu=quantity("engine_cpu", "8" if gpu else "2", _CPU, "a CPU quantity (2, 500m)"),
        engine_memory=quantity("engine_memory", "48Gi" if gpu else "8Gi", _MEMORY, "a memory quantity (8Gi)"),
        gateway_min_replicas=gateway_min,
        gateway_max_replicas=gateway_max,
        gateway_cpu_target_percent=s.integer("gateway_cpu_target_percent", 70, minimum=10, maximum=100),
        gateway_cpu=quantity("gateway_cpu", "1", _CPU, "a CPU quantity (2, 500m)"),
        gateway_memory=quantity("gateway_memory", "1Gi", _MEMORY, "a memory quantity (1Gi)"),
        edge=edge,
        edge_service_type=s.string("edge_service_type", "LoadBalancer", choices=SERVICE_TYPES),
        traefik_chart_version=chart_version("traefik_chart_version", "39.0.2"),
        gateway_api_parent=parent,
        prometheus_url=prometheus_url,
        monitoring_namespace=label("monitoring_namespace", "monitoring"),
        prometheus_release_label=s.string("prometheus_release_label", "kube-prometheus-stack"),
        endpoint_picker=picker,
        inference_gateway_class=inference_class,
        inference_pool_chart_version=chart_version("inference_pool_chart_version", "v1.0.1"),
    )
