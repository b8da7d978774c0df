"""Single registrations of the program, applied for real by the deployment driver.

The deployment (local.py) applies everything the dev stack declares. Some tests need one part of
what a stack declares, applied exactly as the deployment would apply it: the quantize job
(test_quantize_image.py), one image build with a given setting (test_build_ca.py). ``declared``
runs stacks/__main__.py under Pulumi's mock runtime for given stack values and returns its
registrations (tests/stacks/mock_runtime.py); ``apply`` hands one of them to the driver's own
resource monitor hook (driver.DockerResources.new_resource: the same input checks, the same
handlers, build paths resolved from the program's working directory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import pulumi

from stacks.config import read_stack_values
from tests.stacks.mock_runtime import Declared, Deployment, settled_program

from . import driver
from .local import say
from .stack import BASE_STACK


def declared(values: Mapping[str, Any], stack: str = BASE_STACK) -> Deployment:
    """What the program registers for exactly these stack values (the stack file's own values
    that ``values`` leaves out are not used)."""
    overrides = {**{key: None for key in read_stack_values(stack) if key not in values}, **values}
    return settled_program(stack, overrides=overrides)


def resources(client, program: Deployment, docker_host: str) -> driver.DockerResources:
    """The driver's resource monitor hooks on ``client``'s engine, with the program's resource options."""
    return driver.DockerResources(client, driver.Deployment(program.stack), program.options,
                                  docker_host=docker_host, omit={}, build_hook=None, log=say)


def apply(hooks: driver.DockerResources, item: Declared) -> tuple[str, dict]:
    """One registration applied by the driver, exactly as the deployment applies it."""
    return hooks.new_resource(pulumi.runtime.MockResourceArgs(typ=item.type, name=item.name, inputs=item.inputs,
                                                             custom=True))


def remove(client, containers: tuple[str, ...] = (), volumes: tuple[str, ...] = ()) -> None:
    """Remove these containers, then these volumes, where they exist (a test's own leftovers)."""
    import docker.errors

    for name in containers:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(name, force=True, v=True)
    for name in volumes:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_volume(name, force=True)
