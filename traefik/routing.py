"""Traefik's routes as file-provider dynamic configuration: routers, services and middlewares.

The program knows every route at deploy time, so it renders them into one file
(dynamic/routes.yml) that stacks/traefik.py uploads and Traefik's file provider reads; Traefik
needs no Docker socket and no container carries routing labels. Each component contributes a
fragment ({"http": {"routers": ..., "services": ..., "middlewares": ...}}); ``merge`` joins them
and refuses a name declared twice. Keys are Traefik's (camelCase, as the file provider and
SchemaStore's traefik-v3-file-provider.json spells them). Every router names its entry
points: a router without them would listen on all of them, including ops and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Dynamic = dict[str, Any]


def router(*, rule: str, entry_points: Sequence[str], service: str, tls: bool = False,
           cert_resolver: str | None = None, middlewares: Sequence[str] = ()) -> dict[str, Any]:
    if not entry_points:
        raise ValueError(f"router for {service}: entry points are required")
    body: dict[str, Any] = {"rule": rule, "entryPoints": list(entry_points), "service": service}
    if middlewares:
        body["middlewares"] = list(middlewares)
    if tls or cert_resolver:
        body["tls"] = {"certResolver": cert_resolver} if cert_resolver else {}
    return body


def service(host: str, port: int, health_path: str | None = None) -> dict[str, Any]:
    """A service reached by the container's DNS alias on a network Traefik shares with it
    (Docker's embedded DNS follows a replaced container; no IP is written down).

    ``health_path``: Traefik checks it and routes only while it answers, as its Docker provider
    did by skipping containers that were not healthy (traefik pkg/provider/docker/config.go).
    """
    balancer: dict[str, Any] = {"servers": [{"url": f"http://{host}:{port}"}]}
    if health_path:
        balancer["healthCheck"] = {"path": health_path, "interval": "5s", "timeout": "3s"}
    return {"loadBalancer": balancer}


def security_headers(*, hsts_seconds: int) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "contentTypeNosniff": True,
        "frameDeny": True,
        "referrerPolicy": "no-referrer",
        "customResponseHeaders": {"Server": ""},  # do not advertise the server software
    }
    if hsts_seconds:
        headers |= {"stsSeconds": hsts_seconds, "stsIncludeSubdomains": True, "forceSTSHeader": True}
    return {"headers": headers}


def body_limit(max_bytes: int) -> dict[str, Any]:
    """Reject request bodies over ``max_bytes`` at the edge (413).

    Traefik's buffering middleware also buffers whole responses (traefik/traefik#12869),
    which holds back streamed completions until they end; use it only where no route streams.
    """
    return {"buffering": {"maxRequestBodyBytes": max_bytes}}


def ip_allow_list(source_ranges: Sequence[str]) -> dict[str, Any]:
    """Only these client addresses (the TCP peer: no ipStrategy, so X-Forwarded-For is not
    trusted; traefik pkg/config/dynamic/middlewares.go IPStrategy.Get -> RemoteAddrStrategy)."""
    if not source_ranges:
        raise ValueError("ipAllowList: at least one source range")
    return {"ipAllowList": {"sourceRange": list(source_ranges)}}


def fragment(*, routers: Mapping[str, Any] | None = None, services: Mapping[str, Any] | None = None,
             middlewares: Mapping[str, Any] | None = None) -> Dynamic:
    http = {kind: dict(named) for kind, named in
            (("routers", routers), ("services", services), ("middlewares", middlewares)) if named}
    return {"http": http}


def merge(*fragments: Dynamic) -> Dynamic:
    """Several fragments as one dynamic configuration; a name declared twice is an error."""
    merged: Dynamic = {}
    for config in fragments:
        for section, kinds in config.items():
            for kind, named in kinds.items():
                target = merged.setdefault(section, {}).setdefault(kind, {})
                for name, body in named.items():
                    if name in target:
                        raise ValueError(f"{section}.{kind}.{name} declared twice")
                    target[name] = body
    return merged


def routed_services(config: Dynamic) -> dict[str, str]:
    """Router name -> service name."""
    return {name: body["service"] for name, body in config.get("http", {}).get("routers", {}).items()}
