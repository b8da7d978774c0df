"""Docker labels that route through Traefik: routers, services and middlewares.

Keys are written in Traefik's canonical camelCase (Traefik reads labels case-insensitively;
tests/traefik converts them to dynamic configuration and validates it against the schema).
Every router names its entry points: a router without them would listen on all of them,
including the loopback-only ops entrypoint and the metrics one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

PREFIX = "traefik"


def enable(docker_network: str) -> dict[str, str]:
    """Opt a container in (the provider has exposedByDefault=false) on the edge network."""
    return {f"{PREFIX}.enable": "true", f"{PREFIX}.docker.network": docker_network}


def router(name: str, *, rule: str, entry_points: Sequence[str], service: str, tls: bool = False,
           cert_resolver: str | None = None, middlewares: Sequence[str] = ()) -> dict[str, str]:
    if not entry_points:
        raise ValueError(f"router {name}: entry points are required")
    key = f"{PREFIX}.http.routers.{name}"
    labels = {f"{key}.rule": rule, f"{key}.entryPoints": ",".join(entry_points), f"{key}.service": service}
    if tls or cert_resolver:
        labels[f"{key}.tls"] = "true"
    if cert_resolver:
        labels[f"{key}.tls.certResolver"] = cert_resolver
    if middlewares:
        labels[f"{key}.middlewares"] = ",".join(middlewares)
    return labels


def service(name: str, port: int) -> dict[str, str]:
    return {f"{PREFIX}.http.services.{name}.loadBalancer.server.port": str(port)}


def security_headers(name: str, *, hsts_seconds: int) -> dict[str, str]:
    key = f"{PREFIX}.http.middlewares.{name}.headers"
    labels = {
        f"{key}.contentTypeNosniff": "true",
        f"{key}.frameDeny": "true",
        f"{key}.referrerPolicy": "no-referrer",
        f"{key}.customResponseHeaders.Server": "",  # do not advertise the server software
    }
    if hsts_seconds:
        labels |= {f"{key}.stsSeconds": str(hsts_seconds), f"{key}.stsIncludeSubdomains": "true",
                   f"{key}.forceSTSHeader": "true"}
    return labels


def body_limit(name: str, max_bytes: int) -> dict[str, str]:
    """Reject request bodies over ``max_bytes`` at the edge (413).

    Traefik's buffering middleware also buffers whole responses (traefik/traefik#12869),
    which holds back streamed completions until they end; use it only where no route streams.
    """
    return {f"{PREFIX}.http.middlewares.{name}.buffering.maxRequestBodyBytes": str(max_bytes)}


def ip_allow_list(name: str, source_ranges: Sequence[str]) -> dict[str, str]:
    if not source_ranges:
        raise ValueError(f"middleware {name}: at least one source range")
    return {f"{PREFIX}.http.middlewares.{name}.ipAllowList.sourceRange": ",".join(source_ranges)}


def routed_services(labels: Mapping[str, str]) -> dict[str, str]:
    """Router name -> service name, for the routers these labels declare."""
    routers = {}
    for key, value in labels.items():
        parts = key.split(".")
        if len(parts) == 5 and parts[:3] == [PREFIX, "http", "routers"] and parts[4] == "service":
            routers[parts[3]] = value
    return routers
