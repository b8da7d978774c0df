"""The Node component: networks, volumes, and the services wired together.

Networks (each container joins only what it needs):
  edge      Traefik, cloudflared, the gateway, Grafana   the only network with host ports
  internal  gateway, engines, PostgreSQL, Redis,         internal=True: no route out
            Prometheus, Grafana
  metrics   Prometheus, Traefik, cloudflared             internal=True: scrapes only, so the
                                                         edge-facing processes never share a
                                                         network with the data stores
  egress    the engine groups that download models      (hf_hub_offline: false)
Volumes keep data across container replacements and are retained when the stack is destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_docker as docker

from prometheus.render import CLOUDFLARED_JOB, GATEWAY_JOB, PROMETHEUS_JOB, TRAEFIK_JOB, VLLM_JOB
from stacks import containers, naming, traefik, tunnel
from stacks.addresses import PROMETHEUS_HOST, TRAEFIK_HOST, SubnetPlan
from stacks.config import NodeConfig
from stacks.engine import Engine, EngineArgs, ModelsMount
from stacks.gateway import Gateway, GatewayArgs
from stacks.grafana import Grafana, GrafanaArgs
from stacks.jobs import JobHistory
from stacks.postgres import Postgres, PostgresArgs
from stacks.prometheus import Prometheus, PrometheusArgs
from stacks.quantize import QuantizeArgs, QuantizeJob
from stacks.redis import Redis, RedisArgs
from stacks.traefik import Traefik, TraefikArgs
from stacks.tunnel import Tunnel, TunnelArgs

# Volume key -> what it holds. Names on the host: <prefix>-<key>.
DATA_VOLUMES = {
    "postgres-data": "PostgreSQL data (API keys, usage)",
    "redis-data": "Redis append-only file (rate-limit state)",
    "models": "model weights, quantized models, Hugging Face cache",
    "adapters": "LoRA adapters as uploaded (the engine sanitizes copies)",
    "prometheus-data": "Prometheus TSDB",
    "grafana-data": "Grafana database (users, preferences)",
    "traefik-acme": "Let's Encrypt account and certificates (edge.tls_mode acme)",
}


@dataclass(frozen=True)
class NodeArgs:
    config: NodeConfig
    job_history: JobHistory = field(default_factory=JobHistory)  # how the one-shot jobs' last runs ended on the host


class Node(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Node", name, None, opts)
        settings, secrets = args.config.settings, args.config.secrets
        prefix, stack, images = settings.name_prefix, settings.stack, settings.images
        child = pulumi.ResourceOptions(parent=self)

        # -- networks ------------------------------------------------------------------------
        def network(key: str, internal: bool, plan: SubnetPlan | None = None) -> docker.Network:
            ipam = [docker.NetworkIpamConfigArgs(subnet=plan.subnet, gateway=plan.gateway,
                                                 ip_range=plan.dynamic_range)] if plan else None
            # delete_before_replace: the name is fixed, and Docker refuses a second network of that name
            return docker.Network(f"{key}-network", name=f"{prefix}-{key}", driver="bridge", internal=internal,
                                  ipam_configs=ipam,
                                  labels=[docker.NetworkLabelArgs(label=containers.LABEL_STACK, value=stack)],
                                  opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))

        # Fixed subnets where Traefik's ops and metrics entrypoints allow-list peers (stacks/addresses.py).
        edge_plan, metrics_plan = SubnetPlan(settings.edge.subnet), SubnetPlan(settings.edge.metrics_subnet)
        self.edge_network = network("edge", internal=False, plan=edge_plan)
        self.internal_network = network("internal", internal=True)
        self.metrics_network = network("metrics", internal=True, plan=metrics_plan)
        engine_downloads = any(not group.spec.hf_hub_offline for group in settings.engines)
        self.egress_network = network("egress", internal=False) if engine_downloads else None

        # -- volumes -------------------------------------------------------------------------
        def volume(key: str) -> docker.Volume:
            return docker.Volume(f"{key}-volume", name=f"{prefix}-{key}",
                                 labels=[docker.VolumeLabelArgs(label=containers.LABEL_STACK, value=stack)],
                                 opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True))

        self.volumes: dict[str, docker.Volume] = {}
        for key in DATA_VOLUMES:
            if key == "models" and settings.models_host_dir:
                continue  # dev: the host's model directory is bound instead
            if key == "traefik-acme" and settings.edge.tls_mode != "acme":
                continue
            self.volumes[key] = volume(key)

        def placement(*networks: docker.Network, alias: str = "") -> containers.Placement:
            return containers.Placement(prefix=prefix, stack=stack, networks=[(n, alias) for n in networks])

        # -- data stores ---------------------------------------------------------------------
        self.postgres = Postgres("postgres", PostgresArgs(
            image=images["postgres"], placement=placement(self.internal_network, alias=naming.POSTGRES),
            data_volume=self.volumes["postgres-data"]), opts=child)
        self.redis = Redis("redis", RedisArgs(
            image=images["redis"], placement=placement(self.internal_network, alias=naming.REDIS),
            data_volume=self.volumes["redis-data"]), opts=child)

        # -- models: optional quantize job, then one Engine per group --------------------------
        self.quantize = None
        if settings.quantize is not None:
            target = settings.group(settings.quantize_group or "")
            self.quantize = QuantizeJob("quantize", QuantizeArgs(
                spec=settings.quantize, base_image=images["python"],
                build_ca_certificates=settings.build_ca_certificates, placement=placement(),
                models_volume=self.volumes["models"],
                adapters_volume=self.volumes["adapters"],
                # the GPU of the group it prepares: free until that group's engines start after it
                gpu_id=target.gpu_devices[0] if target.gpu_devices else None,
                timeout_minutes=settings.quantize_timeout_minutes, job_history=args.job_history), opts=child)
        self.engines: dict[str, Engine] = {}
        built: dict[str, docker.Image] = {}  # device -> engine image, built once for every group on it
        for group in settings.engines:
            device = group.spec.device
            # the egress network when the engine downloads from the hub
            egress = [self.egress_network] if self.egress_network is not None and not group.spec.hf_hub_offline else []
            prepared_by = self.quantize if group.group == settings.quantize_group else None
            component = "engine" if group.group == naming.DEFAULT_ENGINE_GROUP else f"engine-{group.group}"
            engine = Engine(component, EngineArgs(
                deployment=group,
                base_image=images["vllm_gpu" if device == "cuda" else "vllm_cpu"],
                build_ca_certificates=settings.build_ca_certificates,
                placement=placement(self.internal_network, *egress),
                models=ModelsMount(volume=self.volumes.get("models"), host_dir=settings.models_host_dir),
                adapters_volume=self.volumes["adapters"],
                after=[prepared_by.container] if prepared_by is not None else [],
                gate=prepared_by.succeeded if prepared_by is not None else None,
                image=built.get(device)), opts=child)
            built.setdefault(device, engine.image)
            self.engines[group.group] = engine
        engine_containers = [c for engine in self.engines.values() for c in engine.containers]

        # -- gateway -------------------------------------------------------------------------
        self.gateway = Gateway("gateway", GatewayArgs(
            spec=settings.gateway, base_image=images["python"],
            build_ca_certificates=settings.build_ca_certificates, domain=settings.domain, edge=settings.edge,
            placement=placement(self.edge_network, self.internal_network, alias=naming.GATEWAY),
            internal_placement=placement(self.internal_network, alias="gateway-migrate"),
            database_url=self.postgres.database_url, redis_url=self.redis.url, database=self.postgres.container,
            job_history=args.job_history,
            depends_on=[self.redis.container, *engine_containers]), opts=child)

        # -- observability -------------------------------------------------------------------
        targets = {
            VLLM_JOB: [target for engine in self.engines.values() for target in engine.metrics_targets],
            GATEWAY_JOB: [self.gateway.metrics_target],
            # Traefik and the tunnel come after Prometheus: their modules' targets (what the components expose).
            TRAEFIK_JOB: [traefik.METRICS_TARGET],
            CLOUDFLARED_JOB: [tunnel.METRICS_TARGET] if settings.tunnel_enabled else [],
            PROMETHEUS_JOB: [f"localhost:{naming.PROMETHEUS_PORT}"],
        }
        prometheus_metrics_ip = metrics_plan.fixed(PROMETHEUS_HOST)  # the one peer of Traefik's metrics entrypoint
        self.prometheus = Prometheus("prometheus", PrometheusArgs(
            image=images["prometheus"],
            placement=containers.Placement(prefix=prefix, stack=stack, networks=[
                (self.internal_network, naming.PROMETHEUS),
                (self.metrics_network, naming.PROMETHEUS, prometheus_metrics_ip)]),
            data_volume=self.volumes["prometheus-data"], targets=targets,
            retention=settings.observability.prometheus_retention), opts=child)
        self.grafana = Grafana("grafana", GrafanaArgs(
            image=images["grafana"], domain=settings.domain, edge=settings.edge,
            public=settings.observability.grafana_public,
            placement=placement(self.internal_network, self.edge_network, alias=naming.GRAFANA),
            data_volume=self.volumes["grafana-data"],
            prometheus_url=self.prometheus.url, depends_on=self.prometheus.container), opts=child)

        # -- edge: last, its routes come from the components above ---------------------------
        traefik_metrics_ip = metrics_plan.fixed(TRAEFIK_HOST)
        self.traefik = Traefik("traefik", TraefikArgs(
            image=images["traefik"], edge=settings.edge,
            placement=containers.Placement(prefix=prefix, stack=stack, networks=[
                (self.edge_network, naming.TRAEFIK), (self.metrics_network, naming.TRAEFIK, traefik_metrics_ip)]),
            routes=[self.gateway.routes, self.grafana.routes],
            # ops: what comes through the 127.0.0.1-published port arrives from the edge bridge's address
            ops_sources=[edge_plan.gateway], metrics_address=traefik_metrics_ip,
            metrics_sources=[prometheus_metrics_ip], acme_volume=self.volumes.get("traefik-acme"),
            tls_certificate=settings.tls_certificate, tls_private_key=secrets.tls_private_key), opts=child)
        self.tunnel = None
        if settings.tunnel_enabled:
            assert secrets.tunnel_token is not None
            self.tunnel = Tunnel("cloudflared", TunnelArgs(
                image=images["cloudflared"], hostname=settings.domain, origin_url=self.traefik.origin_url,
                verify_origin_tls=settings.edge.tls_mode == "acme",
                placement=placement(self.edge_network, self.metrics_network, alias=naming.CLOUDFLARED),
                token=secrets.tunnel_token, depends_on=self.traefik.container), opts=child)

        self.outputs = self._stack_outputs(args.config)
        self.register_outputs({"public_url": self.outputs["public_url"]})

    def _stack_outputs(self, config: NodeConfig) -> dict[str, pulumi.Input[Any]]:
        """What `pulumi stack output` shows; secrets stay secret (`--show-secrets` to read them)."""
        settings = config.settings
        containers_by_service = {
            "gateway": self.gateway.container.name,
            "gateway-migrate": self.gateway.migrate.name,
            "postgres": self.postgres.container.name,
            "redis": self.redis.container.name,
            "traefik": self.traefik.container.name,
            "prometheus": self.prometheus.container.name,
            "grafana": self.grafana.container.name,
            **{alias: c.name for group in settings.engines
               for alias, c in zip(group.aliases, self.engines[group.group].containers, strict=True)},
        }
        if self.tunnel:
            containers_by_service["cloudflared"] = self.tunnel.container.name
        if self.quantize:
            containers_by_service["quantize"] = self.quantize.container.name
        return {
            "public_url": settings.public_url,
            "api_base_url": f"{settings.public_url}/v1",
            "served_model_name": settings.engine.spec.served_model_name,
            "models": {group.group: {"kind": group.kind, "served_model_name": group.spec.served_model_name}
                       for group in settings.engines},
            "grafana_url": self.grafana.url,
            "internal_endpoints": {
                "engines": list(settings.gateway.engines),
                "embedding_engines": list(settings.gateway.embedding_engines),
                "gateway": self.gateway.url,
                "gateway_metrics": self.gateway.metrics_url,
                "prometheus": self.prometheus.url,
                "postgres": f"{naming.POSTGRES}:{naming.POSTGRES_PORT}",
                "redis": f"{naming.REDIS}:{naming.REDIS_PORT}",
            },
            "containers": containers_by_service,
            "networks": {"edge": self.edge_network.name, "internal": self.internal_network.name,
                         "metrics": self.metrics_network.name},
            "volumes": {key: v.name for key, v in self.volumes.items()},
            "tunnel_enabled": settings.tunnel_enabled,
            "gateway_admin_token": self.gateway.admin_token,
            "grafana_admin_user": "admin",
            "grafana_admin_password": self.grafana.admin_password,
        }
