"""The deployed-node checks aim at what the Pulumi program really creates.

tests/infra/test_deployed.py finds containers, networks, volumes and published ports through
``DeployedLayout``. Here the program runs under Pulumi's mock runtime (tests/stacks) and the
layout must name exactly what it declares, so the checks cannot drift from the program.
"""

from __future__ import annotations

import pulumi
import pytest

from stacks.config import SECRET_KEYS, parse_settings
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, Deployment, run_program

from .deployed_node import DeployedLayout

VARIANTS = {
    "dev": ("dev", {}),
    "prod": ("prod", {}),
    "prod+tunnel": ("prod", {"overrides": {"tunnel": {"enabled": True}},
                             "secrets": {"tunnel_token": f"{MOCK_SECRET_MARK}-token"}}),
}


def layout_for(d: Deployment, secrets: dict) -> DeployedLayout:
    values = {k: v for k, v in d.values.items() if k not in SECRET_KEYS}
    return DeployedLayout(parse_settings(values, d.stack, secrets_present=list(secrets)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pulumi.runtime.test
def test_layout_names_what_the_program_declares(variant):
    stack, kwargs = VARIANTS[variant]

    def check(d: Deployment):
        layout = layout_for(d, kwargs.get("secrets", {}))
        services = {layout.container(s.name) for s in layout.services()}
        jobs = {layout.container(j) for j in layout.jobs}
        assert services | jobs == set(d.containers)
        # one-shot jobs are the containers the program waits on (attach), the rest run for good
        assert jobs == {name for name, c in d.containers.items() if c.props.get("attach")}
        assert {layout.edge_network, layout.internal_network, layout.network("metrics")} == set(d.networks)
        assert set(layout.data_volumes) == set(d.volumes)
        traefik = d.containers[layout.container("traefik")]
        assert {p["external"]: p["ip"] for p in traefik.props["ports"]} == layout.published_ports
        assert layout.tunnel == (layout.container("cloudflared") in d.containers)

    return run_program(stack, **kwargs).ready().apply(check)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pulumi.runtime.test
def test_probed_aliases_and_ports_are_the_containers_own(variant):
    """The checks reach services by network alias and port: both must be what each container has."""
    stack, kwargs = VARIANTS[variant]

    def check(d: Deployment):
        layout = layout_for(d, kwargs.get("secrets", {}))
        for service in layout.services():
            container = d.containers[layout.container(service.name)]
            aliases = {a for n in container.props.get("networksAdvanced") or [] for a in n.get("aliases") or []}
            assert service.name in aliases, (service.name, aliases)
            # the healthcheck the program declares talks to the same port the suite checks (where it names one)
            test = " ".join(container.props["healthcheck"]["tests"])
            if any(ch.isdigit() for ch in test) and service.name not in ("postgres", "redis", "traefik"):
                assert str(service.port) in test, (service.name, test)

    return run_program(stack, **kwargs).ready().apply(check)
