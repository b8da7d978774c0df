"""The deployment driver refuses what it does not implement, before creating anything.

These run without Docker: the refusals happen in the monitor's hook before the first Engine API
call (a client that fails on any use proves it), and the dev and prod programs are checked,
under the mock runtime, to declare nothing the driver would refuse.
"""

from __future__ import annotations

import pulumi
import pytest

from tests.deploy import driver
from tests.stacks.mock_runtime import run_program, unwrap


class NoEngine:
    """A Docker client that must never be used."""

    class _Api:
        def version(self):
            return {"ApiVersion": "1.41"}

        def __getattr__(self, name):
            raise AssertionError(f"the driver called the Engine API ({name}) for a refused resource")

    api = _Api()


def hooks() -> driver.DockerResources:
    return driver.DockerResources(NoEngine(), driver.Deployment("dev"), {}, omit={},
                                  build_hook=None, log=lambda _: None)


def container_inputs(**extra) -> dict:
    return {"name": "llm-node-dev-x", "image": "x:1.0", "networksAdvanced": [{"name": "n", "aliases": ["x"]}],
            "restart": "unless-stopped", **extra}


def new_resource(typ: str, inputs: dict, name: str = "x"):
    return hooks().new_resource(pulumi.runtime.MockResourceArgs(typ=typ, name=name, inputs=inputs, custom=True))


def test_an_unknown_container_input_is_refused():
    with pytest.raises(driver.NotImplementedByDriver, match=r"input x\.privileged is not implemented"):
        new_resource(driver.CONTAINER, container_inputs(privileged=True))


def test_an_unknown_nested_input_is_refused():
    health = {"tests": ["CMD", "true"], "interval": "5s", "startupProbe": "10s"}
    with pytest.raises(driver.NotImplementedByDriver, match=r"x\.healthcheck\.startupProbe"):
        new_resource(driver.CONTAINER, container_inputs(healthcheck=health))
    with pytest.raises(driver.NotImplementedByDriver, match=r"x\.uploads\.source"):
        new_resource(driver.CONTAINER, container_inputs(uploads=[{"file": "/a", "source": "/etc/passwd"}]))


def test_an_unknown_resource_type_is_refused():
    with pytest.raises(driver.NotImplementedByDriver, match="docker:index/service:Service"):
        new_resource("docker:index/service:Service", {"name": "x"})


def test_an_unknown_resource_option_is_refused():
    refusing = hooks()
    refusing.options[(driver.VOLUME, "v")] = pulumi.ResourceOptions(protect=True)
    with pytest.raises(driver.NotImplementedByDriver, match="option protect"):
        refusing.new_resource(pulumi.runtime.MockResourceArgs(typ=driver.VOLUME, name="v", inputs={"name": "v"},
                                                              custom=True))


def test_a_healthcheck_start_interval_is_refused_on_an_old_engine_like_the_provider():
    # moby's client (the provider's) refuses StartInterval below API 1.44; so does the driver, so
    # the real deployment on this machine's Docker 20.10 proves the program declares none.
    class OldEngine(NoEngine):
        class _Api(NoEngine._Api):
            def inspect_image(self, name):
                return {"Id": "sha256:x"}

        api = _Api()

    strict = driver.DockerResources(OldEngine(), driver.Deployment("dev"), {}, omit={},
                                    build_hook=None, log=lambda _: None)
    health = {"tests": ["CMD", "true"], "interval": "5s", "startInterval": "2s"}
    with pytest.raises(driver.DeployError, match=r"requires API version 1\.44"):
        strict.new_resource(pulumi.runtime.MockResourceArgs(
            typ=driver.CONTAINER, name="x", inputs=container_inputs(healthcheck=health), custom=True))


def test_go_durations():
    assert driver.duration_ns("15s") == 15 * 10**9
    assert driver.duration_ns("1m30s") == 90 * 10**9
    assert driver.duration_ns("250ms") == 250 * 10**6
    with pytest.raises(driver.NotImplementedByDriver):
        driver.duration_ns("15 seconds")


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_everything_the_program_declares_is_implemented(stack):
    deployment = run_program(stack, secrets={"tunnel_token": "t", "tls_private_key": "k"} if stack == "prod" else None)

    def check(deployed):
        for item in deployed.declared:
            if item.type.startswith("llm-node:index:") or item.type == "pulumi:pulumi:Stack":
                continue  # component resources: nothing to create
            driver.check_inputs(item.type, item.name, unwrap(item.inputs))
            driver.check_options(item.type, item.name, deployed.options.get((item.type, item.name)))

    return deployment.ready().apply(check)


def test_gpu_device_requests_are_refused_on_the_local_engine():
    gpu = [{"driver": "nvidia", "deviceIds": ["0"], "capabilities": ["gpu"]}]
    with pytest.raises(driver.DeployError, match="GPU device requests"):
        new_resource(driver.CONTAINER, container_inputs(deviceRequests=gpu))


# -- update: what it keeps, and what it refuses (before any Engine API call) ------------------------
def updating(typ: str, old_inputs: dict, options: pulumi.ResourceOptions | None = None,
             name: str = "x") -> driver.DockerResources:
    previous = driver.Deployment("dev", state={f"{typ}::{name}": {"id": "old-id", "inputs": driver._normal(old_inputs),
                                                                   "outputs": {"name": "kept"}}})
    resources = driver.DockerResources(NoEngine(), driver.Deployment("dev"), {(typ, name): options}, omit={},
                                       build_hook=None, log=lambda _: None)
    resources.previous = previous
    return resources


def update_resource(resources, typ: str, inputs: dict, name: str = "x"):
    return resources.new_resource(pulumi.runtime.MockResourceArgs(typ=typ, name=name, inputs=inputs, custom=True))


def test_an_update_leaves_an_unchanged_resource_untouched():
    resources = updating(driver.CONTAINER, container_inputs())
    assert update_resource(resources, driver.CONTAINER, container_inputs()) == ("old-id", {"name": "kept"})
    password = {"length": 32, "special": False}
    resources = updating(driver.PASSWORD, password)
    assert update_resource(resources, driver.PASSWORD, password) == ("old-id", {"name": "kept"})


def test_an_update_refuses_a_changed_network_or_volume():
    resources = updating(driver.NETWORK, {"name": "n", "internal": True})
    with pytest.raises(driver.NotImplementedByDriver, match="replaces containers only"):
        update_resource(resources, driver.NETWORK, {"name": "n", "internal": False})
    resources = updating(driver.VOLUME, {"name": "v"})
    with pytest.raises(driver.NotImplementedByDriver, match="replaces containers only"):
        update_resource(resources, driver.VOLUME, {"name": "v", "driver": "other"})


def test_an_update_refuses_an_update_in_place_and_a_create_before_delete_replacement():
    replace = pulumi.ResourceOptions(delete_before_replace=True)
    resources = updating(driver.CONTAINER, container_inputs(), replace)
    with pytest.raises(driver.NotImplementedByDriver, match=r"\['restart'\] change without a replacement"):
        update_resource(resources, driver.CONTAINER, container_inputs(restart="always"))
    resources = updating(driver.CONTAINER, container_inputs(), pulumi.ResourceOptions())
    with pytest.raises(driver.NotImplementedByDriver, match="without delete_before_replace"):
        update_resource(resources, driver.CONTAINER, container_inputs(envs=["A=1"]))


def test_an_update_refuses_a_new_resource():
    resources = updating(driver.CONTAINER, container_inputs())
    with pytest.raises(driver.NotImplementedByDriver, match="new in this update"):
        update_resource(resources, driver.CONTAINER, container_inputs(), name="y")
