"""Traefik: the edge. The only container that publishes host ports.

Static configuration from traefik/ (rendered per stack by traefik/static.py), HTTP to HTTPS
redirect, TLS by ACME / a provided certificate / Traefik's self-signed default, JSON access
logs, a "metrics" entrypoint and an "ops" entrypoint (ping, dashboard, Grafana).

Publishing ops on 127.0.0.1 only restricts the host side; inside the container an entrypoint
listens on every interface, so the gateway or cloudflared on the edge network would reach the
unauthenticated dashboard API. So: ops admits only the edge bridge's address (what a
connection through the published port comes from, docker-proxy or not: traefik/reach.py) and
loopback (the healthcheck); metrics listens only on Traefik's fixed address on the metrics
network and admits only Prometheus' fixed address (stacks/addresses.py). Both allow-lists are
entrypoint middlewares, so every router there, Traefik's own included, gets them.
tests/traefik/test_reach.py asserts what reaches what for every pair.

No Docker socket. A mounted socket, even `:ro`, is the whole Docker API (`:ro` only stops
writes to the socket file, not POSTs over it): whoever took over the internet-facing proxy
could read every container's environment and start privileged containers. The program knows
every route at deploy time, so it renders them (the components' ``routes`` fragments and the
dashboard's) into dynamic/routes.yml, uploaded here for Traefik's file provider. Uploads are
ForceNew in the Docker provider (terraform-provider-docker resource_docker_container.go,
"upload"), so a changed route replaces this container with the new file in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from stacks import addresses, containers, naming
from stacks.config import EdgeSettings
from traefik import routing, static

DASHBOARD_ROUTER = "dashboard"
WAIT_SECONDS = 60
METRICS_TARGET = f"{naming.TRAEFIK}:{static.PORTS[static.METRICS]}"  # Prometheus, on the metrics network


@dataclass(frozen=True)
class TraefikArgs:
    image: str
    edge: EdgeSettings
    placement: containers.Placement  # edge + metrics networks
    routes: Sequence[routing.Dynamic]  # the components' fragments (gateway, Grafana)
    ops_sources: Sequence[str]  # addresses allowed on the ops entrypoint (besides loopback)
    metrics_address: str  # Traefik's fixed address on the metrics network
    metrics_sources: Sequence[str]  # addresses allowed on the metrics entrypoint (Prometheus)
    acme_volume: docker.Volume | None  # acme mode
    tls_certificate: str | None  # provided mode
    tls_private_key: pulumi.Output[str] | None


def host_ports(edge: EdgeSettings) -> list[docker.ContainerPortArgs]:
    def port(entry_point: str, external: int, ip: str) -> docker.ContainerPortArgs:
        return docker.ContainerPortArgs(internal=static.PORTS[entry_point], external=external, ip=ip)

    ports = []
    if edge.publish:
        ports += [port(static.WEB, edge.http_port, edge.bind_address),
                  port(static.WEBSECURE, edge.https_port, edge.bind_address)]
    if edge.ops_port:  # host loopback only: reach it through an SSH tunnel (the allow-list does the rest)
        ports.append(port(static.OPS, edge.ops_port, "127.0.0.1"))
    return ports


def dashboard_routes() -> routing.Dynamic:
    """The dashboard and its API, on the ops entrypoint only (allow-listed: the host and loopback)."""
    return routing.fragment(routers={DASHBOARD_ROUTER: routing.router(
        rule="PathPrefix(`/dashboard`) || PathPrefix(`/api`)", entry_points=[static.OPS], service="api@internal")})


def render_routes(fragments: Sequence[routing.Dynamic], *, ops_sources: Sequence[str],
                  metrics_sources: Sequence[str]) -> routing.Dynamic:
    """dynamic/routes.yml: every router, service and middleware Traefik serves."""
    allow_lists = static.render_entry_point_allow_lists(ops_sources=list(ops_sources),
                                                        metrics_sources=list(metrics_sources))
    return routing.merge(allow_lists, dashboard_routes(), *fragments)


class Traefik(pulumi.ComponentResource):
    def __init__(self, name: str, args: TraefikArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Traefik", name, None, opts)
        edge = args.edge
        image = containers.pulled_image(f"{name}-image", args.image, self)

        self.static_config = static.render_static_config(
            tls_mode=edge.tls_mode, acme_email=edge.acme_email, acme_ca_server=edge.acme_ca_server,
            https_host_port=edge.https_port, metrics_address=args.metrics_address)
        self.routes = render_routes(args.routes, ops_sources=args.ops_sources, metrics_sources=args.metrics_sources)
        provided = edge.tls_mode == "provided"
        uploads = [
            containers.text_file(static.STATIC_PATH, static.to_yaml(self.static_config)),
            containers.text_file(static.ROUTES_PATH, static.to_yaml(self.routes)),
            containers.text_file(f"{static.DYNAMIC_DIR}/tls.yml",
                                 static.to_yaml(static.render_dynamic_tls(provided_certificate=provided))),
        ]
        if provided:
            assert args.tls_certificate and args.tls_private_key is not None
            uploads += [containers.text_file(static.CERT_FILE, args.tls_certificate),
                        containers.secret_file(static.KEY_FILE, args.tls_private_key)]
        volumes = []
        if args.acme_volume is not None:
            volumes.append(docker.ContainerVolumeArgs(volume_name=args.acme_volume.name,
                                                      container_path=static.ACME_DIR))

        self.container = docker.Container(
            name,
            name=args.placement.name("traefik"),
            image=args.image,
            uploads=uploads,
            volumes=volumes,
            ports=host_ports(edge),
            networks_advanced=containers.attach(args.placement.networks),
            healthcheck=containers.healthcheck(["CMD", "traefik", "healthcheck", "--ping"], interval=10),
            # Traefik finishes in-flight requests for its lifeCycle.graceTimeOut (10 s) on SIGTERM.
            **containers.graceful_stop(15),
            security_opts=["no-new-privileges:true"],
            capabilities=addresses.without_net_raw(),  # on Traefik's networks: no ARP spoofing
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            wait=True,
            wait_timeout=WAIT_SECONDS,
            labels=containers.labels(args.placement, "traefik"),
            opts=containers.service_options(self, [image], bound_seconds=WAIT_SECONDS),
        )
        self.origin_url = f"https://{naming.TRAEFIK}:{static.PORTS[static.WEBSECURE]}"
        self.metrics_target = METRICS_TARGET
        self.register_outputs({"container": self.container.name})
