"""Grafana: dashboards generated from grafana/ at deploy time, Prometheus provisioned.

The admin password is generated, kept secret and read from a file (GF_..._FILE). Grafana is
reachable through Traefik: on the loopback ops entrypoint under /grafana (default, use an
SSH tunnel), or at https://grafana.<domain> when observability.grafana_public is true.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from grafana.render import GRAFANA_CONFIG_DIR, provisioning_files, render_dashboards
from stacks import addresses, containers, naming
from stacks.config import EdgeSettings
from traefik import routing, static

DATA_DIR = "/var/lib/grafana"
# In the container's own filesystem, not the data volume: each deploy replaces the whole set,
# so a dashboard removed from grafana/ disappears instead of lingering in the volume.
DASHBOARDS_DIR = f"{GRAFANA_CONFIG_DIR}/dashboards/llm-node"
PASSWORD_FILE = f"{naming.SECRETS_DIR}/grafana_admin_password"
START_SCRIPT = "grafana-start.sh"  # stacks/entrypoints/
ADMIN_USER = "admin"
ROUTER = "grafana"
SUB_PATH = "/grafana"


@dataclass(frozen=True)
class GrafanaArgs:
    image: str
    domain: str
    edge: EdgeSettings
    public: bool
    placement: containers.Placement  # internal (Prometheus) + edge (Traefik)
    data_volume: docker.Volume
    prometheus_url: str
    depends_on: pulumi.Resource  # Prometheus


def public_url(domain: str, edge: EdgeSettings, public: bool) -> str:
    if public:
        port = "" if edge.https_port == 443 else f":{edge.https_port}"
        return f"https://grafana.{domain}{port}/"
    return f"http://127.0.0.1:{edge.ops_port}{SUB_PATH}/" if edge.ops_port else ""


def traefik_routes(domain: str, edge: EdgeSettings, public: bool) -> routing.Dynamic:
    """Grafana's router: https://grafana.<domain> when public, else /grafana on the ops entrypoint."""
    if public:
        router = routing.router(rule=f"Host(`grafana.{domain}`)", entry_points=[static.WEBSECURE], service=ROUTER,
                                tls=True, cert_resolver=static.CERT_RESOLVER if edge.tls_mode == "acme" else None)
    else:
        router = routing.router(rule=f"PathPrefix(`{SUB_PATH}`)", entry_points=[static.OPS], service=ROUTER)
    return routing.fragment(routers={ROUTER: router},
                            services={ROUTER: routing.service(naming.GRAFANA, naming.GRAFANA_PORT, "/api/health")})


class Grafana(pulumi.ComponentResource):
    def __init__(self, name: str, args: GrafanaArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Grafana", name, None, opts)
        self.admin_password = containers.generated_secret(f"{name}-admin-password", self)
        image = containers.pulled_image(f"{name}-image", args.image, self)
        self.url = public_url(args.domain, args.edge, args.public)
        self.routes = traefik_routes(args.domain, args.edge, args.public)  # Traefik's file provider reads them
        self.dashboards = render_dashboards()  # grafanalib runs here, at deploy time
        self.provisioning = provisioning_files(args.prometheus_url, DASHBOARDS_DIR)

        uploads = [containers.secret_file(PASSWORD_FILE, self.admin_password)]
        uploads += [containers.text_file(f"{GRAFANA_CONFIG_DIR}/{path}", text)
                    for path, text in self.provisioning.items()]
        uploads += [containers.text_file(f"{DASHBOARDS_DIR}/{file}", text) for file, text in self.dashboards.items()]
        env = {
            "GF_SECURITY_ADMIN_USER": ADMIN_USER,
            "GF_SECURITY_ADMIN_PASSWORD__FILE": PASSWORD_FILE,  # Grafana reads any setting from <NAME>__FILE
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            "GF_PATHS_PROVISIONING": f"{GRAFANA_CONFIG_DIR}/provisioning",
        }
        if self.url:
            env["GF_SERVER_ROOT_URL"] = self.url
        if not args.public:
            env["GF_SERVER_SERVE_FROM_SUB_PATH"] = "true"

        start_script, start_upload = containers.entrypoint_script(START_SCRIPT)
        uploads.append(start_upload)
        self.container = docker.Container(
            name,
            name=args.placement.name("grafana"),
            image=args.image,
            # Sets the admin password from the file on every start (the volume outlives the stack).
            entrypoints=[start_script],
            envs=containers.env_list(env),
            uploads=uploads,
            volumes=[docker.ContainerVolumeArgs(volume_name=args.data_volume.name, container_path=DATA_DIR)],
            networks_advanced=containers.attach(args.placement.networks),
            capabilities=addresses.without_net_raw(),  # on Traefik's networks: no ARP spoofing
            healthcheck=containers.healthcheck(
                containers.wget_check(f"http://127.0.0.1:{naming.GRAFANA_PORT}/api/health"), interval=15),
            **containers.graceful_stop(30),
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            labels=containers.labels(args.placement, "grafana"),
            opts=containers.service_options(self, [image, args.depends_on]),
        )
        self.register_outputs({"container": self.container.name, "url": self.url})
