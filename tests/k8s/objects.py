"""The kubernetes target's declared objects, read back from the mock runtime.

``objects(deployment)`` gives every declared Kubernetes object as the manifest the provider
would apply (apiVersion, kind, metadata, spec...; secrets unwrapped, integers as integers),
keyed by (kind, name). Helm charts are recorded as one resource each with their values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.stacks.mock_runtime import Declared, Deployment

CHART = "kubernetes:helm.sh/v4:Chart"
PROVIDER = "pulumi:providers:kubernetes"


def _ints(value: Any) -> Any:
    """The mock runtime hands numbers back as floats (protobuf Struct): integral ones become ints again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def is_k8s_object(item: Declared) -> bool:
    return item.type.startswith("kubernetes:") and item.type != CHART


def objects(deployment: Deployment) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for item in deployment.declared:
        if is_k8s_object(item):
            manifest = _ints(item.props)
            key = (manifest["kind"], manifest["metadata"]["name"])
            assert key not in found, f"declared twice: {key}"
            found[key] = manifest
    return found


def declared_objects(deployment: Deployment) -> list[Declared]:
    return [item for item in deployment.declared if is_k8s_object(item)]


def charts(deployment: Deployment) -> dict[str, dict[str, Any]]:
    return {item.name: _ints(item.props) for item in deployment.declared if item.type == CHART}


def names(found: dict[tuple[str, str], Any], kind: str) -> set[str]:
    return {name for k, name in found if k == kind}


def pod_templates(found: dict[tuple[str, str], dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(kind, name, pod spec) of every workload."""
    for (kind, name), manifest in found.items():
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield kind, name, manifest["spec"]["template"]["spec"]


def containers(found) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind, name, pod in pod_templates(found):
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield f"{kind}/{name}/{container['name']}", container
