"""Guards for what only a real `pulumi up` shows: each test states the upstream behaviour it
relies on, read in the upstream source, because the mock runtime accepts almost anything.

The program is run under the mock runtime (tests/stacks/mock_runtime.py) and its inputs are
checked against what the Pulumi engine and pulumi-docker v5 do with them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pulumi
import pytest
import yaml

from stacks.config import ConfigError, load_stack_settings, parse_settings, read_stack_values
from stacks.containers import CREATE_MARGIN_SECONDS, go_duration
from stacks.images import DEFAULT_IMAGES, is_pinned
from stacks.jobs import FIRST_RUN, LABEL_RUN, PreviousRun
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


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_every_dockerfile_base_default_is_one_of_the_programs_pinned_images(stack):
    """A Dockerfile built by hand (`docker build services/gateway`) gets its ARG default: it is
    the pinned reference the program itself uses by default (stacks/images.py DEFAULT_IMAGES),
    never `latest`, a bare name or a floating tag such as python:3.11-slim (which is_pinned's
    major.minor rule alone would let through)."""
    cwd = program_working_directory()

    def check(d: Deployment):
        for image in d.of_type(BUILT_IMAGE):
            build = image.props["build"]
            for arg in build.get("args") or {}:
                text = (cwd / build["dockerfile"]).read_text()
                defaults = re.findall(rf"^ARG {arg}=(\S+)\s*$", text, re.MULTILINE)
                assert len(defaults) == 1, f"{image.name}: one `ARG {arg}=<default>` line: {defaults}"
                default = defaults[0]
                assert is_pinned(default), f"{image.name}: ARG {arg}={default} is not pinned"
                assert default in DEFAULT_IMAGES.values(), (
                    f"{image.name}: ARG {arg}={default} is none of stacks/images.py DEFAULT_IMAGES")
    return run_program(stack).ready().apply(check)


@pulumi.runtime.test
def test_a_stack_image_override_reaches_the_built_images():
    mirror = "registry.local/python:3.11.14-slim-bookworm"

    def check(d: Deployment):
        bases = {i.name: i.props["build"]["args"] for i in d.of_type(BUILT_IMAGE)}
        assert bases["gateway-image"] == {"PYTHON_IMAGE": mirror}
        assert bases["quantize-image"] == {"PYTHON_IMAGE": mirror}
    return run_program("prod", overrides={"images": {"python": mirror}}).ready().apply(check)


# -- graceful stop, create timeouts, healthchecks ------------------------------------------------------

def test_go_duration_writes_what_go_reads_back():
    # Go's time.Duration.String() for these values (the provider's read of a healthcheck).
    assert [go_duration(s) for s in (0, 2, 15, 59, 60, 90, 300, 900, 3600, 3725)] == [
        "0s", "2s", "15s", "59s", "1m0s", "1m30s", "5m0s", "15m0s", "1h0m0s", "1h2m5s"]


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_healthchecks_are_canonical_and_a_change_replaces_the_container(stack):
    """The provider reads durations back with Go's Duration.String() and does not apply a
    healthcheck change in update (resource_docker_container_funcs.go: Read, Update)."""
    def check(d: Deployment):
        for name, container in d.containers.items():
            check_ = container.props.get("healthcheck")
            if not check_:
                continue
            for key in ("interval", "timeout", "startPeriod", "startInterval"):
                value = check_[key]
                assert value == go_duration(_go_seconds(value)), f"{name}: healthcheck {key} {value!r}"
            assert "healthcheck" in (container.opts.replace_on_changes or []), name
    return run_program(stack).ready().apply(check)


def _go_seconds(text: str) -> int:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match and text, f"{text!r} is no Go duration in whole seconds"
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_replace_and_destroy_stop_every_service_gracefully(stack):
    def check(d: Deployment):
        for name, container in d.containers.items():
            props = container.props
            if props.get("attach"):
                continue  # jobs are waited for, never stopped
            assert props.get("destroyGraceSeconds", 0) >= props.get("stopTimeout", 10**9) > 0, name
        gateway = d.container("gateway").props
        assert gateway["stopTimeout"] >= load_stack_settings(stack).gateway.shutdown_grace_seconds
        assert d.container("postgres").props["stopSignal"] == "SIGINT"  # PostgreSQL's fast shutdown
    return run_program(stack).ready().apply(check)


@pulumi.runtime.test
def test_job_and_engine_create_timeouts_follow_the_configuration():
    overrides = {"quantize": {"timeout_minutes": 600}, "engine": {"health_start_period_seconds": 3600}}

    def check(d: Deployment):
        quantize = d.container("quantize")
        assert quantize.opts.custom_timeouts.create == f"{600 * 60 + CREATE_MARGIN_SECONDS}s"
        engine = d.container("engine-0")
        assert engine.props["waitTimeout"] == 3600 + 120
        assert engine.opts.custom_timeouts.create == f"{3720 + CREATE_MARGIN_SECONDS}s"
        assert d.container("gateway-migrate").opts.custom_timeouts.create
    return run_program("prod", overrides=overrides).ready().apply(check)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("quantize", "timeout_minutes", 4),
    ("quantize", "timeout_minutes", 3000),
    ("engine", "health_start_period_seconds", 3601),
])
def test_waits_and_job_runs_are_bounded_in_the_configuration(section, key, value):
    values = read_stack_values("prod")
    values[section] = {**values[section], key: value}
    with pytest.raises(ConfigError, match=rf"llm-node:{section}\.{key}: {value} must be at (least|most)"):
        parse_settings(values, "prod")


# -- one-shot jobs run again after a failure ---------------------------------------------------------------

MIGRATE = "llm-node-gateway-migrate"


@pulumi.runtime.test
def test_a_failed_job_gets_a_new_run_label_and_runs_again():
    failed = PreviousRun(container_id="f" * 64, running=False, exit_code=1, run_label="1")

    def check(d: Deployment):
        assert d.container("gateway-migrate").labels[LABEL_RUN] == "retry-ffffffffffff"  # replaced: runs again
        assert d.container("quantize").labels[LABEL_RUN] == FIRST_RUN  # no earlier run on the host
    return run_program("prod", previous_runs={MIGRATE: failed}).ready().apply(check)


@pulumi.runtime.test
def test_a_job_that_succeeded_keeps_its_label_and_does_not_run_again():
    succeeded = PreviousRun(container_id="a" * 64, running=False, exit_code=0, run_label="retry-ffffffffffff")

    def check(d: Deployment):
        assert d.container("gateway-migrate").labels[LABEL_RUN] == "retry-ffffffffffff"
    return run_program("prod", previous_runs={MIGRATE: succeeded}).ready().apply(check)


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_no_healthcheck_needs_docker_api_1_44(stack):
    """The Docker client refuses a healthcheck start_interval below API 1.44 (moby
    client/container_create.go): Docker 20.10-24 hosts (Debian bookworm) could not create a
    container that declares one."""
    def check(d: Deployment):
        for name, container in d.containers.items():
            check_ = container.props.get("healthcheck")
            if check_:
                assert check_["startInterval"] == "0s", name
    return run_program(stack).ready().apply(check)
