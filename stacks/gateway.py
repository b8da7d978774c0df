"""The gateway: the OpenAI-compatible front door, the only service Traefik routes publicly.

Its environment is ``gateway_env(spec)`` from services/launch.py (the dev node uses the same
function) plus the three secrets of ``GATEWAY_SECRET_ENV`` as Pulumi secrets. Its API port
is routed by Traefik (``traefik_routes``, rendered into Traefik's file-provider configuration:
host rule, TLS, security headers, optional allow-list and body limit); its metrics port has
no router, so /metrics is reachable only on the node's networks. A one-shot migration job
brings the database schema up to date first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_docker as docker

from services.launch import GATEWAY_SECRET_ENV, GatewaySpec, gateway_env, gateway_process_argv
from stacks import addresses, containers, naming
from stacks.config import EdgeSettings
from stacks.images import REPO_ROOT, built_image_name
from traefik import routing
from traefik.static import CERT_RESOLVER, WEBSECURE

CONTEXT = "services/gateway"
DOCKERFILE = f"{CONTEXT}/Dockerfile"
ROUTER = "gateway"
MIGRATE_ARGV = ["python", "-m", "llm_gateway.admin", "migrate"]


@dataclass(frozen=True)
class GatewayArgs:
    spec: GatewaySpec
    domain: str
    edge: EdgeSettings
    placement: containers.Placement  # edge (Traefik reaches it there) + internal
    internal_placement: containers.Placement  # for the migration job (database only)
    database_url: pulumi.Output[str]
    redis_url: pulumi.Output[str]
    database: pulumi.Resource  # the PostgreSQL container the migrations run against
    depends_on: Sequence[pulumi.Resource] = ()  # Redis, every engine


def traefik_routes(spec: GatewaySpec, domain: str, edge: EdgeSettings) -> routing.Dynamic:
    """Router, service and middlewares for the gateway's API port (never its metrics port)."""
    middlewares = {f"{ROUTER}-headers": routing.security_headers(hsts_seconds=edge.hsts_seconds)}
    if edge.ip_allow_list:
        middlewares = {f"{ROUTER}-allow-list": routing.ip_allow_list(edge.ip_allow_list)} | middlewares
    if edge.body_limit == "edge":
        middlewares[f"{ROUTER}-body-limit"] = routing.body_limit(spec.max_body_bytes)
    router = routing.router(rule=f"Host(`{domain}`)", entry_points=[WEBSECURE], service=ROUTER, tls=True,
                            cert_resolver=CERT_RESOLVER if edge.tls_mode == "acme" else None,
                            middlewares=list(middlewares))
    return routing.fragment(routers={ROUTER: router}, services={ROUTER: routing.service(naming.GATEWAY, spec.port, "/healthz")},
                            middlewares=middlewares)


class Gateway(pulumi.ComponentResource):
    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Gateway", name, None, opts)
        self.admin_token = containers.generated_secret(f"{name}-admin-token", self, length=48)

        self.image_name = built_image_name("gateway", REPO_ROOT / CONTEXT)
        self.image = containers.built_image(f"{name}-image", self.image_name, CONTEXT, DOCKERFILE, self)
        secrets = {
            GATEWAY_SECRET_ENV["database_url"]: args.database_url,
            GATEWAY_SECRET_ENV["redis_url"]: args.redis_url,
            GATEWAY_SECRET_ENV["admin_token"]: self.admin_token,
        }
        self.env = gateway_env(args.spec)

        # Migrations first: a one-shot job with only the database URL. It needs only PostgreSQL,
        # so it runs while the engines are still loading the model.
        self.migrate = docker.Container(
            f"{name}-migrate",
            name=args.internal_placement.name("gateway-migrate"),
            image=self.image_name,
            entrypoints=MIGRATE_ARGV[:-1],
            command=MIGRATE_ARGV[-1:],
            envs=_secret_env({}, {GATEWAY_SECRET_ENV["database_url"]: args.database_url}),
            networks_advanced=containers.attach(args.internal_placement.networks),
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            labels=containers.labels(args.internal_placement, "gateway-migrate"),
            **containers.JOB_ARGS,
            opts=containers.service_options(self, [self.image, args.database]),
        )
        migrated = containers.job_succeeded(self.migrate, args.internal_placement.name("gateway-migrate"))

        self.routes = traefik_routes(args.spec, args.domain, args.edge)  # Traefik's file provider reads them
        self.container = docker.Container(
            name,
            name=args.placement.name("gateway"),
            image=self.image_name,
            entrypoints=gateway_process_argv("python"),
            envs=_secret_env(self.env, secrets),
            networks_advanced=containers.attach(args.placement.networks),
            capabilities=addresses.without_net_raw(),  # on Traefik's networks: no ARP spoofing
            healthcheck=containers.healthcheck(
                containers.http_check(f"http://127.0.0.1:{args.spec.port}/healthz"), interval="10s"),
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            # Let in-flight streams finish on `docker stop` (the gateway drains on SIGTERM).
            stop_signal="SIGTERM",
            stop_timeout=int(args.spec.shutdown_grace_seconds) + 5,
            wait=True,
            wait_timeout=120,
            labels=containers.labels(args.placement, "gateway", {"llm-node.after": migrated}),
            opts=containers.service_options(self, [self.image, self.migrate, args.database, *args.depends_on]),
        )
        self.url = f"http://{naming.GATEWAY}:{args.spec.port}"
        self.metrics_url = f"http://{naming.GATEWAY}:{args.spec.metrics_port}/metrics"
        self.register_outputs({"container": self.container.name, "url": self.url})


def _secret_env(plain: dict[str, str], secrets: dict[str, pulumi.Output[str]]) -> pulumi.Output[list[str]]:
    """The whole env list as one secret: the docker provider keeps env in the state."""
    names = sorted(secrets)
    return pulumi.Output.secret(pulumi.Output.all(*(secrets[n] for n in names)).apply(
        lambda values: containers.env_list({**plain, **dict(zip(names, values, strict=True))})))
