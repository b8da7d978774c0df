"""The gateway: the OpenAI-compatible front door, the only service Traefik routes publicly.

Its environment is ``gateway_env(spec)`` from services/launch.py (the dev node uses the same
function); its three secrets (database URL, Redis URL, admin token) are Pulumi secrets
uploaded as files into GATEWAY_SECRETS_DIR, which the gateway's settings read: env is
stored in plain text by the provider and printed by `docker inspect`, files are not. Its API port
is routed by Traefik (``traefik_routes``, rendered into Traefik's file-provider configuration:
host rule, TLS, security headers, optional allow-list and body limit); its metrics port has
no router, so /metrics is reachable only on the node's networks. A one-shot migration job
brings the database schema up to date first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from services.launch import GATEWAY_SECRETS_DIR_ENV, GatewaySpec, gateway_env, gateway_process_argv, gateway_secret_file
from stacks import addresses, containers, jobs, naming
from stacks.config import EdgeSettings
from stacks.images import GATEWAY_BUILD
from traefik import routing
from traefik.static import CERT_RESOLVER, WEBSECURE

ROUTER = "gateway"
MIGRATE_ARGV = ["python", "-m", "llm_gateway.admin", "migrate"]
MIGRATE_TIMEOUT_SECONDS = 600  # migrations take seconds; a stuck one fails the update instead of hanging it
WAIT_SECONDS = 120  # healthy after start: the gateway only connects to PostgreSQL and Redis
SECRETS_DIR = f"{naming.SECRETS_DIR}/gateway"


@dataclass(frozen=True)
class GatewayArgs:
    spec: GatewaySpec
    base_image: str  # the Python image the gateway image is built on
    build_ca_certificates: str  # PEM text the image build trusts (stack build_ca_certificates); "" none
    domain: str
    edge: EdgeSettings
    placement: containers.Placement  # edge (Traefik reaches it there) + internal
    internal_placement: containers.Placement  # for the migration job (database only)
    database_url: pulumi.Output[str]
    redis_url: pulumi.Output[str]
    database: pulumi.Resource  # the PostgreSQL container the migrations run against
    job_history: jobs.JobHistory  # how the migration job's last run ended
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
    return routing.fragment(routers={ROUTER: router},
                            services={ROUTER: routing.service(naming.GATEWAY, spec.port, "/healthz")},
                            middlewares=middlewares)


class Gateway(pulumi.ComponentResource):
    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Gateway", name, None, opts)
        self.admin_token = containers.generated_secret(f"{name}-admin-token", self, length=48)

        self.image = containers.built_image(f"{name}-image", "gateway", GATEWAY_BUILD, args.base_image, self,
                                            ca_certificates=args.build_ca_certificates)
        self.env = gateway_env(args.spec)
        secrets_env = {GATEWAY_SECRETS_DIR_ENV: SECRETS_DIR}

        # Migrations first: a one-shot job with only the database URL. It needs only PostgreSQL,
        # so it runs while the engines are still loading the model.
        migrate_name = args.internal_placement.name("gateway-migrate")
        self.migrate = docker.Container(
            f"{name}-migrate",
            name=migrate_name,
            image=self.image.image_name,
            entrypoints=MIGRATE_ARGV[:-1],
            command=MIGRATE_ARGV[-1:],
            envs=containers.env_list(secrets_env),
            uploads=[_secret_upload("database_url", args.database_url)],
            networks_advanced=containers.attach(args.internal_placement.networks),
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            labels=containers.labels(args.internal_placement, "gateway-migrate",
                                     {jobs.LABEL_RUN: args.job_history.run_label(migrate_name)}),
            **jobs.JOB_ARGS,
            opts=containers.service_options(self, [self.image, args.database], bound_seconds=MIGRATE_TIMEOUT_SECONDS),
        )
        migrated = jobs.succeeded(self.migrate, migrate_name)

        self.routes = traefik_routes(args.spec, args.domain, args.edge)  # Traefik's file provider reads them
        self.container = docker.Container(
            name,
            name=args.placement.name("gateway"),
            image=self.image.image_name,
            entrypoints=gateway_process_argv("python"),
            envs=containers.env_list(self.env | secrets_env),
            uploads=[_secret_upload("database_url", args.database_url), _secret_upload("redis_url", args.redis_url),
                     _secret_upload("admin_token", self.admin_token)],
            networks_advanced=containers.attach(args.placement.networks),
            capabilities=addresses.without_net_raw(),  # on Traefik's networks: no ARP spoofing
            healthcheck=containers.healthcheck(
                containers.http_check(f"http://127.0.0.1:{args.spec.port}/healthz"), interval=10),
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            # Let in-flight streams finish on `docker stop` and on replace/destroy (the gateway
            # drains for shutdown_grace_seconds on SIGTERM, then flushes its usage records).
            **containers.graceful_stop(math.ceil(args.spec.shutdown_grace_seconds) + 5, "SIGTERM"),
            wait=True,
            wait_timeout=WAIT_SECONDS,
            labels=containers.labels(args.placement, "gateway", {"llm-node.after": migrated}),
            opts=containers.service_options(self, [self.image, self.migrate, args.database, *args.depends_on],
                                            bound_seconds=WAIT_SECONDS),
        )
        self.url = f"http://{naming.GATEWAY}:{args.spec.port}"
        self.metrics_target = f"{naming.GATEWAY}:{args.spec.metrics_port}"   # Prometheus, on the internal network
        self.metrics_url = f"http://{self.metrics_target}/metrics"
        self.register_outputs({"container": self.container.name, "url": self.url})


def _secret_upload(field: str, value: pulumi.Input[str]) -> docker.ContainerUploadArgs:
    """One of the gateway's secrets as a file its settings read (services/launch.py names it)."""
    return containers.secret_file(f"{SECRETS_DIR}/{gateway_secret_file(field)}", value)
