"""Traefik: the edge. The only container that publishes host ports.

Static configuration from traefik/ (rendered per stack by traefik/static.py), the Docker
provider on a read-only socket with exposedByDefault=false, HTTP to HTTPS redirect, TLS by
ACME / a provided certificate / Traefik's self-signed default, JSON access logs, metrics on
an entrypoint only the metrics network reaches, and an "ops" entrypoint (ping, dashboard,
Grafana) published on 127.0.0.1 only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from stacks import containers, naming
from stacks.config import EdgeSettings
from traefik import routing, static

DASHBOARD_ROUTER = "dashboard"
WAIT_SECONDS = 60


@dataclass(frozen=True)
class TraefikArgs:
    image: str
    edge: EdgeSettings
    placement: containers.Placement  # edge + metrics networks
    edge_network: docker.Network
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
    if edge.ops_port:  # loopback only: reach it through an SSH tunnel
        ports.append(port(static.OPS, edge.ops_port, "127.0.0.1"))
    return ports


def dashboard_labels(network: pulumi.Input[str]) -> dict[str, pulumi.Input[str]]:
    """The dashboard and its API, on the loopback ops entrypoint only."""
    return routing.enable(network) | routing.router(
        DASHBOARD_ROUTER, rule="PathPrefix(`/dashboard`) || PathPrefix(`/api`)", entry_points=[static.OPS],
        service="api@internal")


class Traefik(pulumi.ComponentResource):
    def __init__(self, name: str, args: TraefikArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Traefik", name, None, opts)
        edge = args.edge
        image = containers.pulled_image(f"{name}-image", args.image, self)

        self.static_config = args.edge_network.name.apply(lambda network: static.render_static_config(
            docker_network=network, tls_mode=edge.tls_mode, acme_email=edge.acme_email,
            acme_ca_server=edge.acme_ca_server, https_host_port=edge.https_port))
        provided = edge.tls_mode == "provided"
        uploads = [
            containers.text_file(static.STATIC_PATH, self.static_config.apply(static.to_yaml)),
            containers.text_file(f"{static.DYNAMIC_DIR}/tls.yml",
                                 static.to_yaml(static.render_dynamic_tls(provided_certificate=provided))),
        ]
        if provided:
            assert args.tls_certificate and args.tls_private_key is not None
            uploads += [containers.text_file(static.CERT_FILE, args.tls_certificate),
                        containers.secret_file(static.KEY_FILE, args.tls_private_key)]
        volumes = [docker.ContainerVolumeArgs(host_path=static.DOCKER_SOCKET, container_path=static.DOCKER_SOCKET,
                                              read_only=True)]
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
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            wait=True,
            wait_timeout=WAIT_SECONDS,
            labels=containers.labels(args.placement, "traefik", dashboard_labels(args.edge_network.name)),
            opts=containers.service_options(self, [image], bound_seconds=WAIT_SECONDS),
        )
        self.origin_url = f"https://{naming.TRAEFIK}:{static.PORTS[static.WEBSECURE]}"
        self.metrics_target = f"{naming.TRAEFIK}:{static.PORTS[static.METRICS]}"
        self.register_outputs({"container": self.container.name})
