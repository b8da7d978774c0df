"""Guards for what only a real `pulumi up` shows: each test states the upstream behaviour it
relies on, read in the upstream source, because the mock runtime accepts almost anything.

The program is run under the mock runtime (tests/stacks/mock_runtime.py) and its inputs are
checked against what the Pulumi engine and pulumi-docker v5 do with them.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
import yaml

from tests.stacks.mock_runtime import BUILT_IMAGE, Deployment, run_program

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("dev", "prod")


def program_working_directory() -> Path:
    """Where Pulumi runs the program and its provider plugins: the project's `main` directory
    (pulumi/pulumi pkg/engine/project.go: ProjectInfoContext uses projinfo.GetPwdMain())."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    return (ROOT / project.get("main", ".")).resolve()


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_every_build_context_and_dockerfile_exists_where_pulumi_resolves_it(stack):
    """pulumi-docker v5's Check stats `build.dockerfile` relative to the working directory
    (even in preview) and the build resolves `build.context` the same way (provider/provider.go
    Check, provider/image.go dockerBuild at v5.1.0)."""
    cwd = program_working_directory()

    def check(d: Deployment):
        images = d.of_type(BUILT_IMAGE)
        assert images, "no built images declared"
        for image in images:
            build = image.props["build"]
            context, dockerfile = cwd / build["context"], cwd / build["dockerfile"]
            assert context.is_dir(), f"{image.name}: build context {build['context']!r} resolves to {context}"
            assert dockerfile.is_file(), f"{image.name}: dockerfile {build['dockerfile']!r} resolves to {dockerfile}"
            assert dockerfile.parent == context, f"{image.name}: the Dockerfile belongs to its own context"
    return run_program(stack).ready().apply(check)


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_every_dockerfile_takes_its_base_image_from_the_stack(stack):
    """Each built image names its base through a build argument that the Dockerfile declares
    before FROM, filled from the stack's `images` table (a mirror reaches built images too)."""
    cwd = program_working_directory()

    def check(d: Deployment):
        for image in d.of_type(BUILT_IMAGE):
            build = image.props["build"]
            args = build.get("args") or {}
            assert len(args) == 1, f"{image.name}: one build argument, the base image: {args}"
            (arg, value), = args.items()
            text = (cwd / build["dockerfile"]).read_text()
            assert f"ARG {arg}=" in text and f"FROM ${{{arg}}}" in text, f"{image.name}: FROM ${{{arg}}} missing"
            assert value in d.values.get("images", {}).values() or ":" in value
    return run_program(stack).ready().apply(check)


@pulumi.runtime.test
def test_a_stack_image_override_reaches_the_built_images():
    mirror = "registry.local/python:3.11.14-slim-bookworm"

    def check(d: Deployment):
        bases = {i.name: i.props["build"]["args"] for i in d.of_type(BUILT_IMAGE)}
        assert bases["gateway-image"] == {"PYTHON_IMAGE": mirror}
        assert bases["quantize-image"] == {"PYTHON_IMAGE": mirror}
    return run_program("prod", overrides={"images": {"python": mirror}}).ready().apply(check)
