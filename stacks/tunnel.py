"""cloudflared (optional): a Cloudflare tunnel to Traefik, for nodes without inbound ports.

The token comes from the Pulumi secret ``tunnel_token`` and is uploaded to a file read with
``tunnel run --token-file``: it is encrypted in the state and never appears in the
container's env or command line (`docker inspect` shows neither).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from cloudflared.render import CONFIG_PATH, TOKEN_PATH, render_tunnel_config, to_yaml
from stacks import addresses, containers, naming

METRICS_TARGET = f"{naming.CLOUDFLARED}:{naming.CLOUDFLARED_METRICS_PORT}"  # Prometheus, on the metrics network


@dataclass(frozen=True)
class TunnelArgs:
    image: str
    hostname: str
    origin_url: str  # Traefik's TLS entrypoint
    verify_origin_tls: bool  # false when Traefik serves a self-signed or origin-CA certificate
    placement: containers.Placement  # edge (to Traefik) + metrics networks
    token: pulumi.Output[str]
    depends_on: pulumi.Resource  # Traefik


class Tunnel(pulumi.ComponentResource):
    def __init__(self, name: str, args: TunnelArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Tunnel", name, None, opts)
        image = containers.pulled_image(f"{name}-image", args.image, self)
        metrics = f"0.0.0.0:{naming.CLOUDFLARED_METRICS_PORT}"
        self.config = render_tunnel_config(hostname=args.hostname, origin_url=args.origin_url,
                                           verify_origin_tls=args.verify_origin_tls)
        self.container = docker.Container(
            name,
            name=args.placement.name("cloudflared"),
            image=args.image,
            command=["tunnel", "--no-autoupdate", "--config", CONFIG_PATH, "--metrics", metrics,
                     "run", "--token-file", TOKEN_PATH],
            uploads=[containers.text_file(CONFIG_PATH, to_yaml(self.config)),
                     containers.secret_file(TOKEN_PATH, args.token)],
            networks_advanced=containers.attach(args.placement.networks),
            capabilities=addresses.without_net_raw(),  # on Traefik's networks: no ARP spoofing
            # `tunnel ready` asks the metrics server's /ready: 200 once connected to Cloudflare's edge.
            healthcheck=containers.healthcheck(
                ["CMD", "cloudflared", "tunnel", "--metrics", f"127.0.0.1:{naming.CLOUDFLARED_METRICS_PORT}", "ready"],
                interval=15, timeout=10),
            # cloudflared drains its connections for --grace-period (30 s by default) on SIGTERM.
            **containers.graceful_stop(35),
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            labels=containers.labels(args.placement, "cloudflared"),
            opts=containers.service_options(self, [image, args.depends_on]),
        )
        self.metrics_target = METRICS_TARGET
        self.register_outputs({"container": self.container.name})
