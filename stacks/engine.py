"""vLLM: one engine group (one model), one container per replica (its own GPUs on cuda stacks).

A node declares one Engine per group of the stack's ``engines`` list (stacks/config.py);
replicas are named after their group (``naming.engine_alias``).

The command line is ``engine_args(spec)`` from services/launch.py, the same function the
dev node uses; the image is the official vLLM image (CUDA or CPU build, pinned in
images.py) extended by services/engine/Dockerfile, whose entrypoint sanitizes the LoRA
adapters from /adapters into /run/llm-node/adapters (rejecting any above the command's
--max-lora-rank) and then runs ``vllm serve <args>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from services.launch import engine_args, engine_env
from stacks import containers, naming
from stacks.config import EngineDeployment
from stacks.images import ENGINE_BUILD


@dataclass(frozen=True)
class ModelsMount:
    """The models volume, or (dev) a host directory with the models."""

    volume: docker.Volume | None = None
    host_dir: str | None = None

    def mount(self, read_only: bool) -> docker.ContainerVolumeArgs:
        if self.host_dir:
            return docker.ContainerVolumeArgs(host_path=self.host_dir, container_path=naming.MODELS_DIR, read_only=True)
        assert self.volume is not None
        return docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=naming.MODELS_DIR,
                                          read_only=read_only)


@dataclass(frozen=True)
class EngineArgs:
    deployment: EngineDeployment
    base_image: str  # the official vLLM image for the device
    build_ca_certificates: str  # PEM text the image build trusts (stack build_ca_certificates); "" none
    placement: containers.Placement  # internal network (+ egress when the engine downloads)
    models: ModelsMount
    adapters_volume: docker.Volume
    after: Sequence[pulumi.Resource] = ()  # e.g. the quantize job writing the model
    image: docker.Image | None = None  # another group's engine image for the same device (built once)
    gate: pulumi.Input[str] | None = None  # "ok" once that job succeeded


def container_env(deployment: EngineDeployment) -> dict[str, str]:
    """launch.py's engine env plus where this image finds models and adapters."""
    return engine_env(deployment.spec) | {
        "HF_HOME": naming.HF_HOME,
        "ADAPTERS_SOURCE_DIR": naming.ADAPTERS_SOURCE_DIR,
        "ADAPTERS_SANITIZED_DIR": naming.ADAPTERS_SANITIZED_DIR,
    }


class Engine(pulumi.ComponentResource):
    def __init__(self, name: str, args: EngineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:Engine", name, None, opts)
        deployment, spec = args.deployment, args.deployment.spec
        gpu = spec.device == "cuda"

        self.image = args.image or containers.built_image(f"{name}-image", f"engine-{spec.device}", ENGINE_BUILD,
                                                          args.base_image, self,
                                                          ca_certificates=args.build_ca_certificates)
        self.command = engine_args(spec)
        start_period = deployment.health_start_period_seconds
        wait_seconds = start_period + 120  # the model's load, then a few healthchecks
        gate = {"llm-node.after": args.gate} if args.gate is not None else {}

        self.containers: list[docker.Container] = []
        for index, alias in enumerate(deployment.aliases):
            networks = [(network, alias) for network, *_ in args.placement.networks]
            self.containers.append(docker.Container(
                alias,
                name=args.placement.name(alias),
                image=self.image.image_name,
                command=self.command,
                envs=containers.env_list(container_env(deployment)),
                volumes=[args.models.mount(read_only=spec.hf_hub_offline),
                         docker.ContainerVolumeArgs(volume_name=args.adapters_volume.name,
                                                    container_path=naming.ADAPTERS_SOURCE_DIR, read_only=True)],
                networks_advanced=containers.attach(networks),
                device_requests=[docker.ContainerDeviceRequestArgs(
                    driver="nvidia", device_ids=deployment.replica_gpus(index), capabilities=["gpu"])] if gpu else None,
                # vLLM's workers share tensors through /dev/shm (instead of the host's IPC namespace).
                shm_size=deployment.shm_size_mb,
                capabilities=None if gpu else docker.ContainerCapabilitiesArgs(adds=["SYS_NICE"]),  # CPU thread pinning
                healthcheck=containers.healthcheck(
                    containers.http_check(f"http://127.0.0.1:{spec.port}/health"),
                    interval=30, timeout=10, retries=5, start_period=start_period),
                # vLLM finishes its shutdown (workers, shared memory) on SIGTERM.
                **containers.graceful_stop(30),
                restart=containers.RESTART,
                log_driver=containers.LOG_DRIVER,
                log_opts=containers.LOG_OPTIONS,
                wait=True,  # the gateway starts once the model is loaded
                wait_timeout=wait_seconds,
                labels=containers.labels(args.placement, alias, gate),
                opts=containers.service_options(self, [self.image, *args.after], bound_seconds=wait_seconds),
            ))
        self.urls = deployment.urls
        # Prometheus scrapes vLLM's /metrics on its API port, on the internal network.
        self.metrics_targets = [f"{naming.engine_alias(i, deployment.group)}:{naming.ENGINE_PORT}"
                                for i in range(deployment.replicas)]
        self.register_outputs({"group": deployment.group, "urls": self.urls})
