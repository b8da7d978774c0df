"""What reaches which Traefik entry point, for every (client, entry point) pair of the declared
node: traefik/reach.py over the networks, addresses, capabilities, Traefik's static config, the
rendered routes and the published ports, exactly as the program declares them."""

from __future__ import annotations

import ipaddress
import re

import pulumi
import pytest
import yaml

from stacks.config import ConfigError, load_stack_settings, parse_settings, read_stack_values
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, Deployment, run_program
from traefik import reach, static

VARIANTS = {
    "dev": ("dev", {}),
    "prod": ("prod", {}),
    "prod-tunnel": ("prod", {"overrides": {"tunnel": {"enabled": True}},
                             "secrets": {"tunnel_token": f"{MOCK_SECRET_MARK}-t"}}),
    "prod-tunnel-only": ("prod", {"overrides": {"tunnel": {"enabled": True},
                                                "edge": {"publish": False, "tls_mode": "provided", "acme_email": None},
                                                "tls_certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n"},
                                  "secrets": {"tunnel_token": f"{MOCK_SECRET_MARK}-t",
                                              "tls_private_key": f"{MOCK_SECRET_MARK}-k"}}),
}
ON_TRAEFIKS_NETWORKS = {"gateway", "grafana", "cloudflared", "prometheus"}
ROUTES = "/etc/traefik/dynamic/routes.yml"  # where the program puts the file provider's routes


def declared(d: Deployment) -> reach.Node:
    traefik = d.container("traefik")
    uploads = {u["file"]: u["content"] for u in traefik.props["uploads"]}
    static_config = yaml.safe_load(uploads[static.STATIC_PATH])
    routes = yaml.safe_load(uploads.get(ROUTES, "{}"))
    containers = {name: reach.container_from(c.props) for name, c in d.containers.items()}
    return reach.Node(networks={name: reach.network_from(n.props) for name, n in d.networks.items()},
                      containers=containers, proxy=traefik.props["name"],
                      entry_points=reach.entry_points_from(static_config, routes, traefik.props.get("ports") or []))


def expected(d: Deployment, client: str, entry_point: str) -> bool:
    service = client.removeprefix(d.values["name_prefix"] + "-")
    if entry_point in ("web", "websecure"):  # public anyway: every interface, no allow-list
        if client == reach.INTERNET:
            return d.values["edge"].get("publish", True) and d.values["edge"].get("bind_address") != "127.0.0.1"
        return client in (reach.HOST, reach.SELF) or service in ON_TRAEFIKS_NETWORKS
    if entry_point == "ops":  # ping, dashboard + API, Grafana: the host (SSH tunnel) and the healthcheck only
        return client in (reach.HOST, reach.SELF)
    if entry_point == "metrics":
        return service == "prometheus"
    raise AssertionError(f"unexpected entry point {entry_point}")


@pytest.mark.parametrize("variant", VARIANTS)
@pulumi.runtime.test
def test_what_reaches_each_traefik_entry_point(variant):
    stack, kwargs = VARIANTS[variant]

    def check(d: Deployment):
        node = declared(d)
        assert set(node.entry_points) == {"web", "websecure", "ops", "metrics"}
        answers = reach.matrix(node)
        assert len(answers) == 4 * (len(d.containers) - 1 + 3)
        wrong = {pair: got for pair, got in answers.items() if got != expected(d, *pair)}
        assert wrong == {}, f"(client, entry point) -> reaches, against the expectation: {wrong}"
    return run_program(stack, **kwargs).ready().apply(check)


# -- the model itself -------------------------------------------------------------------------------


def _node(*, bind=None, allow=(), net_raw=False, fixed=None) -> reach.Node:
    ip = ipaddress.ip_address
    edge = reach.Network("edge", internal=False, subnet=ipaddress.IPv4Network("10.0.0.0/24"),
                         gateway=ip("10.0.0.1"), dynamic=ipaddress.IPv4Network("10.0.0.128/25"))
    metrics = reach.Network("metrics", internal=True, subnet=ipaddress.IPv4Network("10.0.1.0/24"),
                            gateway=ip("10.0.1.1"), dynamic=ipaddress.IPv4Network("10.0.1.128/25"))
    containers = {
        "traefik": reach.Container("traefik", {"edge": None, "metrics": ip("10.0.1.2")}, net_raw=False),
        "gateway": reach.Container("gateway", {"edge": fixed}, net_raw=net_raw),
        "prometheus": reach.Container("prometheus", {"metrics": ip("10.0.1.3")}),
    }
    entry = reach.EntryPoint("ops", 8080, bind=bind, allow=allow, published=(ip("127.0.0.1"),))
    return reach.Node({"edge": edge, "metrics": metrics}, containers, "traefik", {"ops": entry})


def test_the_model_answers_the_known_cases():
    net = ipaddress.ip_network
    open_ops = _node()
    assert reach.reaches(open_ops, "gateway", "ops")  # today's ":8080" with no allow-list
    assert reach.reaches(open_ops, "prometheus", "ops")  # on the metrics address: every interface listens
    assert not reach.reaches(open_ops, reach.INTERNET, "ops")  # published on 127.0.0.1 only
    allow = ((net("10.0.0.1/32"), net("127.0.0.1/32")),)
    guarded = _node(allow=allow)
    assert not reach.reaches(guarded, "gateway", "ops") and not reach.reaches(guarded, "prometheus", "ops")
    assert reach.reaches(guarded, reach.HOST, "ops") and reach.reaches(guarded, reach.SELF, "ops")
    assert reach.reaches(_node(allow=allow, net_raw=True), "gateway", "ops")  # ARP: it can be 10.0.0.1
    bound = _node(bind=ipaddress.ip_address("10.0.1.2"))
    assert not reach.reaches(bound, "gateway", "ops") and reach.reaches(bound, "prometheus", "ops")
    assert not reach.reaches(bound, reach.SELF, "ops")  # nothing listens on loopback
    assert reach.reaches(bound, reach.HOST, "ops")  # the host, straight to 10.0.1.2 from the metrics bridge
    with_fixed = _node(allow=((net("10.0.0.9/32"),),), fixed=ipaddress.ip_address("10.0.0.9"))
    assert reach.reaches(with_fixed, "gateway", "ops")


def test_an_entry_point_middleware_must_be_in_the_rendered_file():
    static_config = {"entryPoints": {"ops": {"address": ":8080", "http": {"middlewares": ["missing@file"]}}}}
    with pytest.raises(ValueError, match="missing@file"):
        reach.entry_points_from(static_config, {}, [])


@pytest.mark.parametrize("edge,key", [
    ({"subnet": "10.213.0.1/24"}, "edge.subnet"),  # host bits set
    ({"subnet": "10.0.0.0/8"}, "edge.subnet"),  # wider than /16
    ({"metrics_subnet": "10.213.1.0/30"}, "edge.metrics_subnet"),  # no room for the fixed addresses
    ({"metrics_subnet": "10.213.0.128/25"}, "edge.metrics_subnet"),  # overlaps the edge subnet
    ({"subnet": "fd00::/64"}, "edge.subnet"),  # IPv4 only
])
def test_bad_subnets_fail_naming_the_key(edge, key):
    values = read_stack_values("prod")
    values["edge"] = {**values["edge"], **edge}
    with pytest.raises(ConfigError, match=rf"^llm-node:{re.escape(key)}: "):
        parse_settings(values, "prod")


def test_dev_and_prod_subnets_can_share_a_host():
    dev, prod = load_stack_settings("dev").edge, load_stack_settings("prod").edge
    subnets = [ipaddress.IPv4Network(s) for s in (dev.subnet, dev.metrics_subnet, prod.subnet, prod.metrics_subnet)]
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])
