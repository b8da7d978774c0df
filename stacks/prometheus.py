"""Prometheus: scrapes vLLM, the gateway, Traefik and cloudflared; evaluates the alert rules.

Its configuration and rules come from prometheus/render.py (observability as code) and
are uploaded into the container. It sits on the internal network (engines, gateway,
Grafana) and the metrics network (Traefik, cloudflared), never on the edge network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from prometheus.render import CONTAINER_RULES_DIR, render_prometheus_config, rule_files
from stacks import containers, naming

CONFIG_PATH = "/etc/prometheus/prometheus.yml"
DATA_DIR = "/prometheus"

STOP_SECONDS = 60


@dataclass(frozen=True)
class PrometheusArgs:
    image: str
    placement: containers.Placement  # internal + metrics networks
    data_volume: docker.Volume
    targets: Mapping[str, Sequence[str]]  # job -> host:port (prometheus/render.py job names)
    retention: str


class Prometheus(pulumi.ComponentResource):
    def __init__(self, name: str, args: PrometheusArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Prometheus", name, None, opts)
        image = containers.pulled_image(f"{name}-image", args.image, self)
        self.config_text = render_prometheus_config(args.targets, rules_dir=CONTAINER_RULES_DIR)
        self.rules = rule_files()
        uploads = [containers.text_file(CONFIG_PATH, self.config_text)]
        uploads += [containers.text_file(f"{CONTAINER_RULES_DIR}/{file}", text) for file, text in self.rules.items()]
        self.container = docker.Container(
            name,
            name=args.placement.name("prometheus"),
            image=args.image,
            command=[f"--config.file={CONFIG_PATH}", f"--storage.tsdb.path={DATA_DIR}",
                     f"--storage.tsdb.retention.time={args.retention}", "--web.listen-address=:9090"],
            uploads=uploads,
            volumes=[docker.ContainerVolumeArgs(volume_name=args.data_volume.name, container_path=DATA_DIR)],
            networks_advanced=containers.attach(args.placement.networks),
            healthcheck=containers.healthcheck(
                containers.wget_check(f"http://127.0.0.1:{naming.PROMETHEUS_PORT}/-/ready"), interval=15),
            # SIGTERM: Prometheus closes the TSDB head cleanly (no WAL replay on the next start).
            **containers.graceful_stop(STOP_SECONDS),
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            labels=containers.labels(args.placement, "prometheus"),
            opts=containers.service_options(self, [image]),
        )
        self.url = f"http://{naming.PROMETHEUS}:{naming.PROMETHEUS_PORT}"
        self.register_outputs({"container": self.container.name, "url": self.url})
