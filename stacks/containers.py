"""Settings every container of the node shares, and small builders the components use.

Every long-running container: a pinned image, `unless-stopped`, rotated json-file logs,
a healthcheck, `llm-node.*` labels, a graceful stop (``graceful_stop``), and
`delete_before_replace` (names are fixed, so the old container must go before its
replacement can take the name). One-shot jobs (quantize, migrations) run to completion
during `pulumi up` and never restart.

What the Docker provider does with these inputs was read in its source
(kreuzwerker/terraform-provider-docker, internal/provider/resource_docker_container*.go,
which pulumi-docker v5 wraps):
  * delete stops a container with ``destroy_grace_seconds`` as the timeout, 0 when unset
    (resourceDockerContainerDelete): without it every replace and destroy is a SIGKILL,
    whatever the container's own stop timeout says;
  * create includes ``wait`` (healthy) and ``attach`` (job exit) and runs under the
    resource's create timeout, 20 minutes unless ``custom_timeouts`` says otherwise
    (dockerContainerCreateDefaultTimeout);
  * the healthcheck is read back with Go's time.Duration.String() ("900s" reads as
    "15m0s": a diff on every refresh) and is not among the attributes update applies, so a
    changed healthcheck must replace the container (``replace_on_changes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from stacks.images import BuildRecipe

RESTART = "unless-stopped"
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


# Room beyond a container's wait or run bound: creating it, uploading its files, starting it.
CREATE_MARGIN_SECONDS = 300


def go_duration(seconds: int) -> str:
    """``seconds`` as Go's time.Duration.String() writes it ("15s", "15m0s", "1h0m0s").

    The provider stores healthcheck durations in that form when it reads a container back;
    writing them the same way keeps `pulumi refresh` and `pulumi preview` free of diffs.
    """
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def healthcheck(test: Sequence[str], *, interval: int = 15, timeout: int = 5, retries: int = 5,
                start_period: int = 20, start_interval: int = 0) -> docker.ContainerHealthcheckArgs:
    """Durations in seconds, written in the provider's canonical form (``go_duration``).

    No start_interval (0s: Docker checks every ``interval`` during the start period too): the
    Docker client refuses a non-zero one below API 1.44 (moby client/container_create.go,
    "specify health-check start interval"), so a host with Docker 20.10-24 (Debian bookworm's
    docker.io) could not create a single container of the node.
    """
    return docker.ContainerHealthcheckArgs(tests=list(test), interval=go_duration(interval),
                                           timeout=go_duration(timeout), retries=retries,
                                           start_period=go_duration(start_period),
                                           start_interval=go_duration(start_interval))


class GracefulStop(TypedDict, total=False):
    stop_timeout: int
    destroy_grace_seconds: int
    stop_signal: str


def graceful_stop(seconds: int, signal: str | None = None) -> GracefulStop:
    """Container arguments that give the service ``seconds`` to shut down cleanly, on `docker
    stop` (its own stop timeout) and on replace or destroy by Pulumi (destroy_grace_seconds)."""
    args: GracefulStop = {"stop_timeout": seconds, "destroy_grace_seconds": seconds}
    if signal:
        args["stop_signal"] = signal
    return args


def http_check(url: str) -> list[str]:
    """A healthcheck that needs only Python in the image (no curl in slim images)."""
    return ["CMD", "python3", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"]


def wget_check(url: str) -> list[str]:
    """A healthcheck for busybox/alpine-based images (Prometheus, Grafana)."""
    return ["CMD", "wget", "-q", "-O", "/dev/null", url]


def text_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
    return docker.ContainerUploadArgs(file=path, content=content, permissions="0444")


ENTRYPOINTS_DIR = Path(__file__).resolve().parent / "entrypoints"
ENTRYPOINTS_PATH = "/run/llm-node"  # where the node's start scripts are uploaded in a container


def entrypoint_script(name: str) -> tuple[str, docker.ContainerUploadArgs]:
    """The container path of stacks/entrypoints/<name> and its (executable) upload."""
    path = f"{ENTRYPOINTS_PATH}/{name}"
    return path, docker.ContainerUploadArgs(file=path, content=(ENTRYPOINTS_DIR / name).read_text(),
                                            executable=True, permissions="0555")


def secret_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
    """A file from a Pulumi secret: encrypted in the state, absent from `docker inspect`."""
    return docker.ContainerUploadArgs(file=path, content=pulumi.Output.secret(content), permissions=SECRET_FILE_MODE)


def env_list(env: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in sorted(env.items())]


def service_options(parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = (), *,
                    bound_seconds: int | None = None) -> pulumi.ResourceOptions:
    """Options of every container: replaced (never updated) when its healthcheck changes, and a
    create timeout that covers ``bound_seconds`` (its wait_timeout, or a job's run bound)."""
    timeouts = None
    if bound_seconds is not None:
        timeouts = pulumi.CustomTimeouts(create=f"{bound_seconds + CREATE_MARGIN_SECONDS}s")
    return pulumi.ResourceOptions(parent=parent, delete_before_replace=True, depends_on=list(depends_on),
                                  replace_on_changes=["healthcheck"], custom_timeouts=timeouts)


def generated_secret(resource_name: str, parent: pulumi.Resource, length: int = 32) -> pulumi.Output[str]:
    """A generated password, kept as a Pulumi secret (letters and digits: safe in URLs and config files)."""
    password = random.RandomPassword(resource_name, length=length, special=False,
                                     opts=pulumi.ResourceOptions(parent=parent))
    return pulumi.Output.secret(password.result)


def built_image(resource_name: str, component: str, recipe: BuildRecipe, base_image: str,
                parent: pulumi.Resource, *, ca_certificates: str) -> docker.Image:
    """An image built from this repository on the Docker host itself; nothing to push.

    Tagged with a hash of its build context, base image and extra CA certificates
    (``build_ca_certificates``), so a source or base change gives a new tag (and new
    containers), and an unchanged tree never rebuilds.
    """
    return docker.Image(
        resource_name,
        image_name=recipe.image_name(component, base_image, ca_certificates),
        build=docker.DockerBuildArgs(context=recipe.context, dockerfile=recipe.dockerfile,
                                     args=recipe.args(base_image, ca_certificates), platform="linux/amd64"),
        skip_push=True,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def pulled_image(resource_name: str, reference: str, parent: pulumi.Resource) -> docker.RemoteImage:
    """Pull a pinned image; kept on the host when the stack is destroyed (other stacks may use it)."""
    return docker.RemoteImage(resource_name, name=reference, keep_locally=True,
                              opts=pulumi.ResourceOptions(parent=parent))
