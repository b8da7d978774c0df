"""The Traefik v3 JSON Schemas (../shared/schemas) and a labels -> dynamic configuration converter.

Traefik turns Docker labels into the same dynamic configuration the file provider reads
(http.routers / services / middlewares). ``labels_to_dynamic`` does that conversion the way
Traefik's label parser does, guided by the schema: keys match properties case-insensitively,
lists are comma-separated, booleans and integers are parsed, ``tls=true`` is an empty TLS
section, and the label-only ``loadBalancer.server.port`` becomes a server URL. What cannot be
matched is kept as written, so the schema (additionalProperties: false) rejects it.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jsonschema

SCHEMAS = Path(os.environ.get("LLM_NODE_SCHEMAS", Path(__file__).resolve().parents[3] / "shared" / "schemas"))
STATIC_SCHEMA = SCHEMAS / "traefik-v3.json"
DYNAMIC_SCHEMA = SCHEMAS / "traefik-v3-file-provider.json"
PROVIDER_LABELS = ("enable", "docker")  # traefik.enable, traefik.docker.*: provider options, not configuration


@lru_cache(maxsize=None)
def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def validator(path: Path) -> jsonschema.Draft7Validator:
    schema = load(path)
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    return jsonschema.Draft7Validator(schema)


def errors(path: Path, document: Any) -> list[str]:
    """Every schema violation, as 'path.to.key: message' lines (empty when valid)."""
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator(path).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        pointer = node["$ref"].lstrip("#/").split("/")
        node = schema
        for part in pointer:
            node = node[part]
    return node


def _properties(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    node = _resolve(schema, node)
    props = dict(node.get("properties", {}))
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        props.update(_properties(schema, branch))
    return props


def _coerce(schema: dict[str, Any], node: dict[str, Any] | None, value: Any) -> Any:
    if node is None:
        return value
    node = _resolve(schema, node)
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if isinstance(value, str):
        if "boolean" in kinds and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if "integer" in kinds and value.lstrip("-").isdigit():
            return int(value)
        if "array" in kinds:
            return [_coerce(schema, node.get("items"), item.strip()) for item in value.split(",")]
        if ("object" in kinds or _properties(schema, node)) and value.lower() == "true":
            return {}  # e.g. routers.x.tls=true: TLS with defaults
        return value
    if isinstance(value, dict):
        props = _properties(schema, node)
        lowered = {name.lower(): name for name in props}
        extra = _resolve(schema, node).get("additionalProperties")
        out = {}
        for key, child in value.items():
            canonical = lowered.get(key.lower())
            if canonical is not None:
                out[canonical] = _coerce(schema, props[canonical], child)
            elif isinstance(extra, dict):  # user-named keys: router, service, middleware names
                out[key] = _coerce(schema, extra, child)
            else:
                out[key] = child  # unknown: left for the schema to reject
        return out
    return value


def labels_to_dynamic(labels: Mapping[str, str], container_host: str) -> dict[str, Any]:
    """The dynamic configuration Traefik derives from one container's labels."""
    tree: dict[str, Any] = {}
    for key, value in labels.items():
        parts = key.split(".")
        if parts[0].lower() != "traefik" or len(parts) < 2 or parts[1].lower() in PROVIDER_LABELS:
            continue
        node = tree
        for part in parts[1:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # "x=true" and "x.y=z" both given: the section wins
                child = node[part] = {}
            node = child
        if isinstance(node.get(parts[-1]), dict) and value.lower() == "true":
            continue
        node[parts[-1]] = value
    # Traefik's label-only shortcut: loadBalancer.server.{port,scheme} -> servers[].url
    for service in (tree.get("http", {}).get("services", {}) or {}).values():
        for lb_key in [k for k in service if k.lower() == "loadbalancer"]:
            balancer = service[lb_key]
            for server_key in [k for k in balancer if k.lower() == "server"]:
                server = {k.lower(): v for k, v in balancer.pop(server_key).items()}
                balancer["servers"] = [{"url": f"{server.get('scheme', 'http')}://{container_host}:{server['port']}"}]
    schema = load(DYNAMIC_SCHEMA)
    return _coerce(schema, schema, tree)


def merge_dynamic(*configs: dict[str, Any]) -> dict[str, Any]:
    """Several containers' dynamic configurations as one (Traefik merges providers' sections)."""
    merged: dict[str, Any] = {}
    for config in configs:
        for section, kinds in config.items():
            for kind, named in kinds.items():
                target = merged.setdefault(section, {}).setdefault(kind, {})
                for name, body in named.items():
                    assert name not in target, f"{section}.{kind}.{name} declared twice"
                    target[name] = body
    return merged
