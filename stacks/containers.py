"""Settings every container of the node shares, and small builders the components use.

Every long-running container: a pinned image, `unless-stopped`, rotated json-file logs,
a healthcheck, `llm-node.*` labels, and `delete_before_replace` (names are fixed, so the
old container must go before its replacement can take the name). One-shot jobs
(quantize, migrations) run to completion during `pulumi up` and never restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pulumi
import pulumi_docker as docker
import pulumi_random as random

RESTART = "unless-stopped"
JOB_RESTART = "no"
LOG_DRIVER = "json-file"
LOG_OPTIONS = {"max-size": "20m", "max-file": "5"}  # at most 100 MB of logs per container
SECRET_FILE_MODE = "0444"  # readable by the (non-root) service user; the container is the boundary

LABEL_STACK = "llm-node.stack"
LABEL_SERVICE = "llm-node.service"


@dataclass(frozen=True)
class Placement:
    """Where a service's containers go: names, stack labels and the networks it joins."""

    prefix: str
    stack: str
    networks: Sequence[tuple[docker.Network, str] | tuple[docker.Network, str, str]] = ()  # (network, alias[, IPv4])

    def name(self, service: str) -> str:
        return f"{self.prefix}-{service}"


def labels(placement: Placement, service: str, extra: Mapping[str, pulumi.Input[str]] | None = None
           ) -> list[docker.ContainerLabelArgs]:
    values: dict[str, pulumi.Input[str]] = {LABEL_STACK: placement.stack, LABEL_SERVICE: service, **(extra or {})}
    return [docker.ContainerLabelArgs(label=key, value=value) for key, value in sorted(values.items())]


def attach(networks: Sequence[tuple[docker.Network, str] | tuple[docker.Network, str, str]]
           ) -> list[docker.ContainerNetworksAdvancedArgs]:
    """A third element is a fixed IPv4 address on that network (Traefik's allow-lists name it)."""
    return [docker.ContainerNetworksAdvancedArgs(name=network.name, aliases=[alias],
                                                 ipv4_address=fixed[0] if fixed else None)
            for network, alias, *fixed in networks]


def healthcheck(test: Sequence[str], *, interval: str = "15s", timeout: str = "5s", retries: int = 5,
                start_period: str = "20s") -> docker.ContainerHealthcheckArgs:
    return docker.ContainerHealthcheckArgs(tests=list(test), interval=interval, timeout=timeout, retries=retries,
                                           start_period=start_period, start_interval="2s")


def http_check(url: str) -> list[str]:
    """A healthcheck that needs only Python in the image (no curl in slim images)."""
    return ["CMD", "python3", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"]


def wget_check(url: str) -> list[str]:
    """A healthcheck for busybox/alpine-based images (Prometheus, Grafana)."""
    return ["CMD", "wget", "-q", "-O", "/dev/null", url]


def text_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
    return docker.ContainerUploadArgs(file=path, content=content, permissions="0444")


def secret_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
    """A file from a Pulumi secret: encrypted in the state, absent from `docker inspect`."""
    return docker.ContainerUploadArgs(file=path, content=pulumi.Output.secret(content), permissions=SECRET_FILE_MODE)


def env_list(env: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in sorted(env.items())]


def service_options(parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = ()) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, delete_before_replace=True, depends_on=list(depends_on))


def generated_secret(resource_name: str, parent: pulumi.Resource, length: int = 32) -> pulumi.Output[str]:
    """A generated password, kept as a Pulumi secret (letters and digits: safe in URLs and config files)."""
    password = random.RandomPassword(resource_name, length=length, special=False,
                                     opts=pulumi.ResourceOptions(parent=parent))
    return pulumi.Output.secret(password.result)


def built_image(resource_name: str, image_name: str, context: str, dockerfile: str, parent: pulumi.Resource,
                build_args: Mapping[str, pulumi.Input[str]] | None = None) -> docker.Image:
    """An image built from this repository on the Docker host itself; nothing to push."""
    return docker.Image(
        resource_name,
        image_name=image_name,
        build=docker.DockerBuildArgs(context=context, dockerfile=dockerfile, args=build_args,
                                     platform="linux/amd64"),
        skip_push=True,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def pulled_image(resource_name: str, reference: str, parent: pulumi.Resource) -> docker.RemoteImage:
    """Pull a pinned image; kept on the host when the stack is destroyed (other stacks may use it)."""
    return docker.RemoteImage(resource_name, name=reference, keep_locally=True,
                              opts=pulumi.ResourceOptions(parent=parent))


def job_succeeded(job: docker.Container, what: str) -> pulumi.Output[str]:
    """"ok" once the one-shot ``job`` exited 0; fails the deployment otherwise.

    The Docker provider waits for an attached container to exit but does not fail on a
    non-zero exit code, so dependents take this Output to refuse to start after a failed job.
    """
    def check(code: int | None) -> str:
        if code not in (0, None):  # None: not run in this update (unchanged) or a preview
            raise RuntimeError(f"{what} failed with exit code {code}: docker logs {what} on the node")
        return "ok"

    return job.exit_code.apply(check)


# Container arguments that make a container a one-shot job: it runs to completion while
# `pulumi up` waits (attach), is not expected to keep running, and never restarts. Its logs
# are not copied into the state (they could be large); read them with `docker logs`.
JOB_ARGS: Mapping[str, object] = {"must_run": False, "attach": True, "restart": JOB_RESTART}
