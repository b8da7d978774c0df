"""PostgreSQL: API keys and usage. Internal network only; password generated and secret."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from stacks import containers, naming

USER = "llmnode"
DATABASE = "llmnode"
DATA_DIR = "/var/lib/postgresql/data"
PASSWORD_FILE = f"{naming.SECRETS_DIR}/postgres_password"
START_SCRIPT = "postgres-start.sh"  # stacks/entrypoints/


@dataclass(frozen=True)
class PostgresArgs:
    image: str
    placement: containers.Placement  # the internal network only
    data_volume: docker.Volume


class Postgres(pulumi.ComponentResource):
    def __init__(self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Postgres", name, None, opts)
        self.password = containers.generated_secret(f"{name}-password", self)
        image = containers.pulled_image(f"{name}-image", args.image, self)

        start_script, start_upload = containers.entrypoint_script(START_SCRIPT)
        self.container = docker.Container(
            name,
            name=args.placement.name("postgres"),
            image=args.image,
            # Sets the password from the file on every start (the volume outlives the stack).
            entrypoints=[start_script],
            command=["postgres"],
            envs=containers.env_list({
                "POSTGRES_USER": USER,
                "POSTGRES_DB": DATABASE,
                # The official image reads the password from this file: it never sits in env.
                "POSTGRES_PASSWORD_FILE": PASSWORD_FILE,
            }),
            uploads=[containers.secret_file(PASSWORD_FILE, self.password), start_upload],
            volumes=[docker.ContainerVolumeArgs(volume_name=args.data_volume.name, container_path=DATA_DIR)],
            networks_advanced=containers.attach(args.placement.networks),
            healthcheck=containers.healthcheck(["CMD", "pg_isready", "-U", USER, "-d", DATABASE, "-h", "127.0.0.1"],
                                               interval=10),
            # SIGINT: PostgreSQL's fast shutdown (the official image's STOPSIGNAL), then a checkpoint.
            **containers.graceful_stop(60, "SIGINT"),
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            shm_size=256,
            wait=True,  # the gateway's migrations need a database that accepts connections
            wait_timeout=120,
            labels=containers.labels(args.placement, "postgres"),
            opts=containers.service_options(self, [image], bound_seconds=120),
        )
        # Only the gateway uses it; secret because it embeds the password.
        self.database_url: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.concat(
            "postgresql://", USER, ":", self.password, "@", naming.POSTGRES, ":", str(naming.POSTGRES_PORT), "/",
            DATABASE))
        self.register_outputs({"container": self.container.name})
