"""Redis: rate-limit buckets and concurrency leases. Internal only; AOF on; password secret."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from stacks import containers, naming

CONFIG_FILE = "/usr/local/etc/redis/redis.conf"
PASSWORD_FILE = f"{naming.SECRETS_DIR}/redis_password"
DATA_DIR = "/data"


def redis_conf(password: str) -> str:
    return "\n".join([
        "# Rendered by stacks/redis.py",
        "appendonly yes",  # every limiter write is logged, so a restart keeps the windows
        "appendfsync everysec",
        f"dir {DATA_DIR}",
        "protected-mode yes",
        f"requirepass {password}",
        "",
    ])


@dataclass(frozen=True)
class RedisArgs:
    image: str
    placement: containers.Placement  # the internal network only
    data_volume: docker.Volume


class Redis(pulumi.ComponentResource):
    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Redis", name, None, opts)
        self.password = containers.generated_secret(f"{name}-password", self)
        image = containers.pulled_image(f"{name}-image", args.image, self)

        self.container = docker.Container(
            name,
            name=args.placement.name("redis"),
            image=args.image,
            # The password is in the uploaded config file, not on the command line or in env.
            command=["redis-server", CONFIG_FILE],
            uploads=[
                containers.secret_file(CONFIG_FILE, self.password.apply(redis_conf)),
                containers.secret_file(PASSWORD_FILE, self.password),
            ],
            volumes=[docker.ContainerVolumeArgs(volume_name=args.data_volume.name, container_path=DATA_DIR)],
            networks_advanced=containers.attach(args.placement.networks),
            healthcheck=containers.healthcheck(
                ["CMD-SHELL", f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli ping | grep -q PONG'],
                interval=10),
            # SIGTERM: Redis fsyncs the append-only file before it exits.
            **containers.graceful_stop(30),
            restart=containers.RESTART,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            wait=True,
            wait_timeout=60,
            labels=containers.labels(args.placement, "redis"),
            opts=containers.service_options(self, [image], bound_seconds=60),
        )
        self.url: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.concat(
            "redis://:", self.password, "@", naming.REDIS, ":", str(naming.REDIS_PORT), "/0"))
        self.register_outputs({"container": self.container.name})
