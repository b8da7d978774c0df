"""The test deployment: the dev stack (stacks/Pulumi.dev.yaml) with stand-in images.

Only two values differ from dev, and only here (never in the stack files): ``docker_host``
names the private daemon (the provider's host, also where the program reads its jobs' last
runs: stacks/jobs.py), and the ``images`` table points PostgreSQL, Redis and Prometheus at their
stand-ins and the build bases at theirs: ``vllm_cpu`` (the VLLM_IMAGE build argument of
services/engine/Dockerfile) at the CPU vLLM stand-in, ``python`` (PYTHON_IMAGE of
services/gateway and services/quantize) at the Python stand-in. Traefik, Grafana and cloudflared
are not deployed: no image of them can be obtained on these machines in any form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stacks.config import SECRET_KEYS, read_stack_values
from stacks.images import DEFAULT_IMAGES
from tests.stacks.mock_runtime import deep_merge

BASE_STACK = "dev"

# llm-node.service label -> why the container is not created.
OMITTED: Mapping[str, str] = {
    "traefik": "Traefik is not deployed locally: no Traefik image can be obtained on these machines "
               "(no registry, no Debian package)",
    "grafana": "Grafana is not deployed locally: no Grafana image can be obtained on these machines "
               "(no registry, no Debian package)",
    "cloudflared": "cloudflared is not deployed locally: no cloudflared image can be obtained on these machines, "
                   "and the tunnel needs Cloudflare",
}
OMITTED_IMAGE_KEYS = ("traefik", "grafana", "cloudflared")

# stack image key -> stand-in (tests/deploy/standins)
STANDIN_FOR: Mapping[str, str] = {
    "postgres": "postgres",
    "redis": "redis",
    "prometheus": "prometheus",
    "vllm_cpu": "vllm-cpu",
    "python": "python",
}


def stack_values(standins: Mapping[str, str], docker_host: str) -> dict[str, Any]:
    """The dev stack's values with the private daemon as Docker host and the stand-ins as images."""
    values = {k: v for k, v in read_stack_values(BASE_STACK).items() if k not in SECRET_KEYS}
    overrides = {"docker_host": docker_host, "images": {key: standins[name] for key, name in STANDIN_FOR.items()}}
    return deep_merge(values, overrides)


# The quantize job's test stack (tests/deploy/test_quantize_image.py): the dev stack with the job
# switched on as a cpu stack would have it (the dev stack binds the host's model directory
# read-only instead; the job needs the models volume), the chat group serving its output. What it
# reads is copied into the models volume first: the tiny model and the repository's calibration text.
QUANTIZE_SOURCE_DIR = "base/tiny-llama"
QUANTIZE_OUTPUT_DIR = "tiny-llama-W4A16"
QUANTIZE_CALIBRATION_FILE = "calibration/default.txt"
QUANTIZE_GROUP = "chat"


def quantize_stack_values(python_image: str, docker_host: str) -> dict[str, Any]:
    """The dev stack's values with the quantize job on (W4A16_ASYM, prod's scheme: AWQ) and
    ``python_image`` as the base of the images built on Python."""
    values = {k: v for k, v in read_stack_values(BASE_STACK).items() if k not in SECRET_KEYS}
    engines = [dict(group, model_dir=QUANTIZE_OUTPUT_DIR) if group["name"] == QUANTIZE_GROUP else group
               for group in values["engines"]]
    quantize = {"enabled": True, "group": QUANTIZE_GROUP, "source_model_dir": QUANTIZE_SOURCE_DIR,
                "output_model_dir": QUANTIZE_OUTPUT_DIR, "calibration_file": QUANTIZE_CALIBRATION_FILE,
                "scheme": "W4A16_ASYM", "num_calibration_samples": 32, "max_seq_length": 128, "timeout_minutes": 15}
    return deep_merge(values, {"docker_host": docker_host, "volumes": None, "engines": engines, "quantize": quantize,
                               "images": {"python": python_image}})


def build_ca_stack_values(images: Mapping[str, str], docker_host: str, ca_file: str | None) -> dict[str, Any]:
    """The dev stack's values with these ``images`` (build bases) and, unless None, the stack
    setting ``build_ca_certificates`` (tests/deploy/test_build_ca.py)."""
    values = {k: v for k, v in read_stack_values(BASE_STACK).items() if k not in SECRET_KEYS}
    return deep_merge(values, {"docker_host": docker_host, "images": dict(images), "build_ca_certificates": ca_file})


def omitted_images(values: Mapping[str, Any]) -> tuple[str, ...]:
    images = {**DEFAULT_IMAGES, **(values.get("images") or {})}
    return tuple(images[key] for key in OMITTED_IMAGE_KEYS)
