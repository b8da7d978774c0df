"""The node's policies for the kubernetes target, as plain functions over resource properties.

Same shape as policy/rules.py: a resource rule takes ``(resource_type, props)`` — props as
CrossGuard passes them (the manifest: apiVersion, kind, metadata, spec...; secrets decrypted)
— and returns violation messages; the stack rule takes every resource. Resources of the Docker
target are not theirs (they return nothing), and the Docker rules ignore these.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

try:  # imported as the package `policy` (tests) or run from this directory by the Pulumi CLI
    from . import rules
except ImportError:
    import rules  # type: ignore[no-redef]

K8S = "kubernetes:"
CHART = "kubernetes:helm.sh/v4:Chart"
SERVICE = "kubernetes:core/v1:Service"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
# Workload kind -> where its pod spec is.
WORKLOADS: Mapping[str, Sequence[str]] = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
}
RUN_TO_COMPLETION = ("kubernetes:batch/v1:Job", "kubernetes:batch/v1:CronJob")
EXTERNAL_SERVICE_TYPES = ("LoadBalancer", "NodePort")
# The edge: Traefik (its chart's Service carries this label). Nothing else is exposed.
EDGE_LABELS: Mapping[str, str] = {"app.kubernetes.io/name": "traefik"}
EDGE_CHARTS = ("traefik",)
# Capabilities a container may add: SYS_NICE lets the CPU engine pin its threads (as on Docker).
ALLOWED_CAPABILITIES = ("SYS_NICE",)


def _dig(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    path = WORKLOADS.get(resource_type)
    return _dig(props, path) if path else None


def pod_labels(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, str]:
    path = WORKLOADS.get(resource_type)
    if not path:
        return {}
    metadata = _dig(props, ("metadata",)) if path == ("spec",) else _dig(props, (*path[:-1], "metadata"))
    return (metadata or {}).get("labels") or {}


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            yield f"{key[:-1]} {container.get('name', '?')}", container


# -- Services: only the edge is reachable from outside the cluster ----------------------------------------


def no_external_services(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type == SERVICE:
        kind = _dig(props, ("spec", "type")) or "ClusterIP"
        labels = _dig(props, ("metadata", "labels")) or {}
        is_edge = all(labels.get(k) == v for k, v in EDGE_LABELS.items())
        if kind in EXTERNAL_SERVICE_TYPES and not is_edge:
            return [f"Service of type {kind} outside the edge: only Traefik's Service may be {kind}; "
                    "route through the edge instead"]
    if resource_type == CHART and props.get("chart") not in EDGE_CHARTS:
        kind = _dig(props, ("values", "service", "type"))
        if kind in EXTERNAL_SERVICE_TYPES:
            return [f"chart {props.get('chart')!r} asks for a {kind} Service: only the edge chart may"]
    return []


# -- containers: probes, requests and limits ---------------------------------------------------------------


def probes_and_resources(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    problems = []
    long_running = resource_type not in RUN_TO_COMPLETION
    for where, container in _containers(spec):
        if where.startswith("container ") and long_running:
            for probe in ("readinessProbe", "livenessProbe"):
                if not container.get(probe):
                    problems.append(f"{where}: no {probe}")
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (resources.get(section) or {})]
            if missing:
                problems.append(f"{where}: no {section} for {', '.join(missing)}")
    return problems


# -- no privilege ------------------------------------------------------------------------------------------


def no_privilege(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    problems = [f"pod uses {field}" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    problems += [f"pod mounts the host path {v['hostPath'].get('path')!r} (volume {v.get('name')})"
                 for v in spec.get("volumes") or [] if v.get("hostPath")]
    for where, container in _containers(spec):
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        added = [c for c in (context.get("capabilities") or {}).get("add") or [] if c not in ALLOWED_CAPABILITIES]
        if added:
            problems.append(f"{where}: adds capabilities {', '.join(added)}")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{where}: binds a hostPort")
    return problems


# -- pinned images -----------------------------------------------------------------------------------------


def pinned_images(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    problems = []
    spec = pod_spec(resource_type, props)
    if spec is not None:
        for where, container in _containers(spec):
            image = str(container.get("image") or "")
            if not rules.image_is_pinned(image):
                problems.append(f"{where}: image {image!r} is not pinned: use a version tag or a digest")
    if resource_type == CHART:
        version = str(props.get("version") or "")
        if not version or not rules.image_is_pinned(f"chart:{version}"):
            problems.append(f"chart {props.get('chart')!r} version {version!r} is not pinned")
        image = _dig(props, ("values", "image")) or {}
        if image.get("tag") is not None and not rules.image_is_pinned(f"{image.get('repository', 'x')}:{image['tag']}"):
            problems.append(f"chart {props.get('chart')!r} image tag {image['tag']!r} is not pinned")
    return problems


# -- no secret in plain env --------------------------------------------------------------------------------


def no_secret_env(resource_type: str, props: Mapping[str, Any],
                  allowed_env: Iterable[str] = rules.DEFAULT_ALLOWED_SECRET_ENV) -> list[str]:
    """Secrets reach pods as files from Secret volumes: never env (values, secretKeyRef, envFrom) or argv."""
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    problems = []
    for where, container in _containers(spec):
        envs = []
        for entry in container.get("env") or []:
            if _dig(entry, ("valueFrom", "secretKeyRef")):
                problems.append(f"{where}: env {entry.get('name')} comes from a Secret: mount the Secret as files")
            envs.append(f"{entry.get('name')}={entry.get('value') or ''}")
        for source in container.get("envFrom") or []:
            if source.get("secretRef"):
                problems.append(f"{where}: envFrom a Secret: mount it as files instead")
        as_docker = {"envs": envs, "command": list(container.get("command") or []) + list(container.get("args") or [])}
        problems += [f"{where}: {message}" for message in rules.no_plain_secrets(rules.CONTAINER, as_docker,
                                                                                 allowed_env)]
    return problems


# -- a NetworkPolicy for every workload (stack rule) ------------------------------------------------------


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    selector = selector or {}
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def network_policy_for_every_workload(resources: Sequence[rules.Resource]) -> list[tuple[str, str]]:
    """A namespace with workloads has a default-deny policy (all pods, Ingress and Egress), and every
    workload is selected by a policy of its own (a non-empty podSelector) that says what it may do."""
    policies: dict[str, list[Mapping[str, Any]]] = {}
    for r in resources:
        if r.type == NETWORK_POLICY:
            policies.setdefault(_dig(r.props, ("metadata", "namespace")) or "", []).append(r.props)
    problems = []
    for r in resources:
        if r.type not in WORKLOADS:
            continue
        namespace = _dig(r.props, ("metadata", "namespace")) or ""
        labels = pod_labels(r.type, r.props)
        mine = policies.get(namespace, [])
        deny_all = any(not (_dig(p, ("spec", "podSelector")) or {}) and
                       {"Ingress", "Egress"} <= set(_dig(p, ("spec", "policyTypes")) or []) and
                       not _dig(p, ("spec", "ingress")) and not _dig(p, ("spec", "egress")) for p in mine)
        own = [p for p in mine
               if (_dig(p, ("spec", "podSelector")) or {}) and _selects(_dig(p, ("spec", "podSelector")), labels)]
        if not deny_all:
            problems.append((r.name, f"namespace {namespace!r} has no default-deny NetworkPolicy (podSelector {{}}, "
                                     "Ingress and Egress, no rules)"))
        if not own:
            problems.append((r.name, f"no NetworkPolicy selects its pods ({dict(labels)}): declare what it may "
                                     "reach and who may reach it"))
    return problems
