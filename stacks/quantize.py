"""The quantize job: a one-shot container that writes the 4-bit model into the models volume.

Its arguments are ``quantize_args(spec)`` from services/launch.py; the image is built from
services/quantize/Dockerfile. `pulumi up` waits for it, and the engine starts only after it
succeeded (``succeeded``). It runs with no network: the source model and the calibration
text are already in the models volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from services.launch import QuantizeSpec, quantize_args
from stacks import containers, jobs, naming
from stacks.images import QUANTIZE_BUILD


@dataclass(frozen=True)
class QuantizeArgs:
    spec: QuantizeSpec
    base_image: str  # the Python image the job's image is built on
    build_ca_certificates: str  # PEM text the image build trusts (stack build_ca_certificates); "" none
    placement: containers.Placement  # no networks: network_mode none
    models_volume: docker.Volume
    adapters_volume: docker.Volume
    gpu_id: str | None  # the GPU it calibrates on (None on a cpu stack)
    timeout_minutes: int  # how long `pulumi up` lets it run
    job_history: jobs.JobHistory  # how its last run ended


class QuantizeJob(pulumi.ComponentResource):
    def __init__(self, name: str, args: QuantizeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-node:index:QuantizeJob", name, None, opts)
        self.image = containers.built_image(f"{name}-image", "quantize", QUANTIZE_BUILD, args.base_image, self,
                                            ca_certificates=args.build_ca_certificates)
        self.command = quantize_args(args.spec)
        self.container = docker.Container(
            name,
            name=args.placement.name("quantize"),
            image=self.image.image_name,
            command=self.command,
            volumes=[
                docker.ContainerVolumeArgs(volume_name=args.models_volume.name, container_path=naming.MODELS_DIR),
                docker.ContainerVolumeArgs(volume_name=args.adapters_volume.name,
                                           container_path=naming.ADAPTERS_SOURCE_DIR, read_only=True),
            ],
            network_mode="none",
            device_requests=[docker.ContainerDeviceRequestArgs(driver="nvidia", device_ids=[args.gpu_id],
                                                               capabilities=["gpu"])] if args.gpu_id else None,
            shm_size=4096,
            log_driver=containers.LOG_DRIVER,
            log_opts=containers.LOG_OPTIONS,
            labels=containers.labels(args.placement, "quantize",
                                     {jobs.LABEL_RUN: args.job_history.run_label(args.placement.name("quantize"))}),
            **jobs.JOB_ARGS,
            opts=containers.service_options(self, [self.image], bound_seconds=args.timeout_minutes * 60),
        )
        self.succeeded = jobs.succeeded(self.container, args.placement.name("quantize"))
        self.register_outputs({"container": self.container.name})
